"""Questions about a scene's patch grid, their prompt text, and the testbed's word-level tokenizer.

Question kinds (answers are single words, so GQA's exact match and POPE's yes/no parsing apply as is):
- exist     "Is there a red object in the image?"          yes / no          (scenes_pope)
- choose    "Which color is in the image, red or blue?"    the present one   (scenes_gqa, GQA chooseAttr)
- size      "Is the red object big or small?"              big / small       (scenes_gqa, GQA chooseAttr)
- bigcolor  "What color is the big object?"                a colour          (scenes_gqa, GQA queryAttr)
All are answered from the visible cells (`scenes.label_grid`); a size question is only asked when the
object's visible cell count is clearly big or clearly small.

The tokenizer is word-level (lower-cased, punctuation split off): one token per word, and the grid word
of an object cell IS the colour word the question uses. The prompt is the testbed checkpoint's chat template
"USER: <image>\\n{question}\\nAnswer the question using a single word or phrase. ASSISTANT:" that the
evaluation wrapper builds (`prompt_format=hf`) from lmms-eval's POPE / GQA `post_prompt`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from mmtok.data.scenes import BG, BIG_MIN_CELLS, COLOR_NAMES, GRID, SMALL_MAX_CELLS, Scene

IMAGE_TOKEN = "<image>"  # the image placeholder of the prompt format the scenes' questions are asked in
POST_PROMPT = "\nAnswer the question using a single word or phrase."
SPECIALS = ("<unk>", "<s>", "</s>", "<pad>", IMAGE_TOKEN)
KINDS = ("exist", "choose", "size", "bigcolor")
_WORDS = (
    "user : assistant is there a object in the image ? answer question using single word or phrase . "
    "which color , big small what yes no"
).split()
VOCAB = (*SPECIALS, BG, *COLOR_NAMES, *dict.fromkeys(_WORDS))


@dataclass(frozen=True)
class Question:
    kind: str
    text: str  # as stored in the benchmark (without the post prompt)
    answer: str
    key: str  # the word whose position also predicts the answer in training (the auxiliary loss)


def exist(color: str, present: bool) -> Question:
    return Question("exist", f"Is there a {color} object in the image?", "yes" if present else "no", color)


def choose(a: str, b: str, answer: str) -> Question:
    return Question("choose", f"Which color is in the image, {a} or {b}?", answer, b)


def size(color: str, big: bool) -> Question:
    return Question("size", f"Is the {color} object big or small?", "big" if big else "small", color)


def bigcolor(color: str) -> Question:
    return Question("bigcolor", "What color is the big object?", color, "big")


def size_classes(scene: Scene, cells: dict[str, int], grid: int = GRID) -> dict[str, bool]:
    """colour -> True (clearly big) / False (clearly small), for the visible objects whose size is clear."""
    scale = (grid / GRID) ** 2
    out = {}
    for obj in scene.objects:
        n = cells.get(obj.color, 0)
        if obj.big and n >= BIG_MIN_CELLS * scale:
            out[obj.color] = True
        elif not obj.big and 1 <= n <= SMALL_MAX_CELLS * scale:
            out[obj.color] = False
    return out


def ask(rng: random.Random, scene: Scene, cells: dict[str, int], kind: str, grid: int = GRID) -> Question | None:
    """One question of `kind` about the visible `cells` (colour -> cell count), or None if it has none."""
    present = sorted(cells, key=COLOR_NAMES.index)
    absent = [c for c in COLOR_NAMES if c not in cells]
    if kind == "exist":
        if present and (not absent or rng.random() < 0.5):
            return exist(rng.choice(present), True)
        return exist(rng.choice(absent), False)
    if kind == "choose":
        if not present or not absent:
            return None
        yes, no = rng.choice(present), rng.choice(absent)
        a, b = (yes, no) if rng.random() < 0.5 else (no, yes)
        return choose(a, b, yes)
    classes = size_classes(scene, cells, grid)
    if kind == "size":
        if not classes:
            return None
        color = rng.choice(sorted(classes, key=COLOR_NAMES.index))
        return size(color, classes[color])
    if kind == "bigcolor":
        big = [c for c, b in classes.items() if b]
        # exactly one clearly big object and every other visible object clearly small
        if len(big) != 1 or any(c not in classes for c in present):
            return None
        return bigcolor(big[0])
    raise ValueError(f"unknown question kind {kind!r}; valid: {', '.join(KINDS)}")


def build_tokenizer():
    """The testbed's word-level fast tokenizer (BOS added, `<image>` special, left padding)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        padding_side="left",
        extra_special_tokens={"image_token": IMAGE_TOKEN},
    )
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    return tokenizer


def prompt_text(question: str) -> str:
    """What the chat template gives for one image + question (the image placeholder once)."""
    return f"USER: {IMAGE_TOKEN}\n{question}{POST_PROMPT} ASSISTANT:"
