"""Train the testbed LLaVA from scratch on CPU: `python -m mmtok.testbed.train --out results/testbed/model`.

Two stages with fixed targets, so they run at the same time on one core each:
- stage "lm": the Llama LLM, text only. Its input embeddings are frozen to a fixed random N(0, 1) table
  (`embedding_table`); a scene is written as one word per patch-grid cell ("bg" or the colour word),
  followed by several questions in the evaluation prompt format, the loss on each answer (+ EOS). A
  second loss term asks for the answer at the question's key word too (without it the answer after "?"
  alone stayed at chance for minutes). Length curriculum 6x6 -> 12x12 -> 24x24 cells, switched on
  held-out accuracy; in the 24x24 phase every 4th batch shows a random ordered subset of 4-144 cells
  (answers from the cells shown), so the LLM stays sane on pruned inputs.
- stage "vision": CLIP tower + transformers' `LlavaMultiModalProjector`; each of the 576 projected
  patch tokens is regressed onto the frozen embedding of its cell word ((1 - cos) + 0.1 MSE, object
  patches x5). Trained and shipped with `vision_feature_layer = -1` (the layer trained).
Then `assemble` loads both into `LlavaForConditionalGeneration` (strict: nothing missing) and saves it
with its processor. Deterministic in the seed (one thread per stage).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mmtok.data import scene_questions as Q
from mmtok.data.scenes import BG, COLOR_NAMES, GRID, IMAGE_SIZE, PATCH, counts, flip, label_grid, render, sample_scene
from mmtok.models.llava.tiny import LLAVA15_CHAT_TEMPLATE  # the prompt format the scenes' questions are asked in

HIDDEN = 128
IMAGE_MEAN = [0.48145466, 0.4578275, 0.40821073]
IMAGE_STD = [0.26862954, 0.26130258, 0.27577711]
KIND_WEIGHTS = {"exist": 0.45, "choose": 0.2, "size": 0.2, "bigcolor": 0.15}


# -- shared pieces ---------------------------------------------------------------------------------
def embedding_table(seed: int, vocab: int = len(Q.VOCAB)) -> torch.Tensor:
    return torch.randn(vocab, HIDDEN, generator=torch.Generator().manual_seed(seed))


def cell_ids(labels: np.ndarray) -> np.ndarray:
    """Token id of each cell's word (bg / colour), raster order."""
    words = np.array([Q.VOCAB.index(BG)] + [Q.VOCAB.index(c) for c in COLOR_NAMES])
    return words[labels.reshape(-1)]


def configs():
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    text = LlamaConfig(
        vocab_size=len(Q.VOCAB),
        hidden_size=HIDDEN,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=1024,
        pad_token_id=Q.VOCAB.index("<pad>"),
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    vision = CLIPVisionConfig(
        hidden_size=HIDDEN,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=IMAGE_SIZE,
        patch_size=PATCH,
        projection_dim=HIDDEN,
    )
    llava = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=Q.VOCAB.index(Q.IMAGE_TOKEN),
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    return text, vision, llava


def image_processor():
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        do_center_crop=True,
        image_mean=IMAGE_MEAN,
        image_std=IMAGE_STD,
    )


class Log:
    def __init__(self, path: Path):
        self.path, self.t0 = path, time.time()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = path.open("w")

    def __call__(self, **record) -> None:
        record = {"t": round(time.time() - self.t0, 1), **record}
        line = json.dumps(record)
        self.file.write(line + "\n")
        self.file.flush()
        print(line, flush=True)


# -- stage 1: the LLM on text ----------------------------------------------------------------------
class Encoder:
    """Token ids of the prompt pieces (memoised: a handful of question strings repeat)."""

    def __init__(self):
        self.tok = Q.build_tokenizer()
        self.memo: dict[str, list[int]] = {}
        self.head = self.ids(f"USER: {Q.IMAGE_TOKEN}")  # without BOS, <image> replaced by the grid
        assert self.head[-1] == Q.VOCAB.index(Q.IMAGE_TOKEN)
        self.head = self.head[:-1]

    def ids(self, text: str) -> list[int]:
        if text not in self.memo:
            self.memo[text] = self.tok(text, add_special_tokens=False)["input_ids"]
        return self.memo[text]

    def sequence(self, grid: list[int], qs: list[Q.Question]) -> tuple[list[int], list[int]]:
        """(input ids, labels): BOS USER : <grid> q1 ... ASSISTANT : a1 </s> USER : q2 ... ; labels
        at the positions that predict each answer (the last prompt token and the key word) and EOS."""
        ids = [1, *self.head, *grid]
        labels = [-100] * len(ids)
        for i, q in enumerate(qs):
            text = f"\n{q.text}{Q.POST_PROMPT} ASSISTANT:"
            if i:
                text = "USER: " + q.text + Q.POST_PROMPT + " ASSISTANT:"
            piece = self.ids(text)
            answer = Q.VOCAB.index(q.answer)
            key = Q.VOCAB.index(q.key)
            # the key word's last occurrence inside the question (before the post prompt)
            qlen = len(self.ids(q.text))
            start = len(piece) - len(self.ids(Q.POST_PROMPT + " ASSISTANT:")) - qlen
            key_pos = max(j for j in range(start, start + qlen) if piece[j] == key)
            base = len(ids)
            ids += piece
            labels += [-100] * len(piece)
            labels[base + key_pos] = answer
            labels[-1] = answer
            ids += [answer, 2]
            labels += [2, -100]
        return ids, labels


def draw_questions(rng: random.Random, scene, cells, grid: int, k: int, kinds=Q.KINDS) -> list[Q.Question]:
    names = [n for n in KIND_WEIGHTS if n in kinds]
    out = []
    for _ in range(k):
        kind = rng.choices(names, [KIND_WEIGHTS[n] for n in names])[0]
        q = Q.ask(rng, scene, cells, kind, grid) or Q.ask(rng, scene, cells, "exist", grid)
        out.append(q)
    return out


def scene_example(rng: random.Random, grid: int, k: int, subset: bool = False):
    scene = sample_scene(rng)
    labels = label_grid(scene, grid)
    ids = cell_ids(labels)
    if subset:
        n = rng.randint(4, 144)
        keep = sorted(rng.sample(range(len(ids)), n))
        ids = ids[keep]
        flat = labels.reshape(-1)[keep]
        cells = counts(flat)
        qs = draw_questions(rng, scene, cells, grid, k, kinds=("exist", "choose"))
    else:
        # size questions need cells finer than 6x6 (a small object covers no 56-px cell)
        kinds = Q.KINDS if grid >= 12 else ("exist", "choose")
        qs = draw_questions(rng, scene, counts(labels), grid, k, kinds=kinds)
    return ids.tolist(), qs


def batch(encoder: Encoder, examples) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    seqs = [encoder.sequence(g, qs) for g, qs in examples]
    n = max(len(s) for s, _ in seqs)
    pad = Q.VOCAB.index("<pad>")
    ids = torch.full((len(seqs), n), pad)
    labels = torch.full((len(seqs), n), -100)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, (s, lab) in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        labels[i, : len(lab)] = torch.tensor(lab)
        mask[i, : len(s)] = 1
    return ids, labels, mask


def heldout(rng_seed: int, grid: int, n: int = 240) -> list:
    rng = random.Random(f"heldout:{rng_seed}:{grid}")
    return [scene_example(rng, grid, 1) for _ in range(n)]


@torch.no_grad()
def lm_accuracy(model, encoder: Encoder, examples, bs: int = 40) -> dict[str, float]:
    model.eval()
    right: dict[str, list[int]] = {}
    for i in range(0, len(examples), bs):
        chunk = examples[i : i + bs]
        ids, labels, mask = batch(encoder, chunk)
        logits = model(input_ids=ids, attention_mask=mask).logits
        for j, (_, qs) in enumerate(chunk):
            last = int(mask[j].sum()) - 3  # the ":" after ASSISTANT (then answer, EOS)
            pred = int(logits[j, last].argmax())
            right.setdefault(qs[0].kind, []).append(int(pred == Q.VOCAB.index(qs[0].answer)))
    model.train()
    out = {k: sum(v) / len(v) for k, v in right.items()}
    out["all"] = sum(sum(v) for v in right.values()) / sum(len(v) for v in right.values())
    return out


def train_lm(out: Path, seed: int, steps24: int, log: Log) -> None:
    from transformers import LlamaForCausalLM

    text_cfg, _, _ = configs()
    torch.manual_seed(seed)
    model = LlamaForCausalLM(text_cfg)
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(embedding_table(seed))
    model.model.embed_tokens.weight.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-3, weight_decay=0.01)
    encoder = Encoder()
    rng = random.Random(f"lm:{seed}")
    # (grid, batch size, questions per scene, switch accuracy, max steps)
    phases = [(6, 32, 8, 0.80, 300), (12, 16, 8, 0.90, 400), (GRID, 8, 7, None, steps24)]
    step = 0
    for grid, bs, k, switch, max_steps in phases:
        held = heldout(seed, grid)
        for s in range(max_steps):
            lr = 2e-3 * min(1.0, (step + 1) / 50)
            if switch is None:  # final phase: cosine decay to 10 %
                lr = 2e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s / max_steps)))
            for group in opt.param_groups:
                group["lr"] = lr
            subset = switch is None and s % 4 == 3
            ids, labels, mask = batch(encoder, [scene_example(rng, grid, k, subset) for _ in range(bs)])
            # labels sit at the position that predicts them (no shift, unlike HF's causal-LM loss)
            logits = model(input_ids=ids, attention_mask=mask).logits
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            step += 1
            if s % 25 == 0:
                log(stage="lm", step=step, grid=grid, loss=round(float(loss), 4), lr=round(lr, 6))
            if (s + 1) % 100 == 0 or s + 1 == max_steps:
                acc = lm_accuracy(model, encoder, held)
                log(stage="lm", step=step, grid=grid, heldout={k: round(v, 3) for k, v in acc.items()})
                if switch is not None and acc["all"] >= switch:
                    break
    torch.save(model.state_dict(), out / "lm.pt")


# -- stage 2: tower + projector --------------------------------------------------------------------
def vision_batch(rng: random.Random, processor, n: int):
    images, targets = [], []
    for _ in range(n):
        scene = sample_scene(rng)
        if rng.random() < 0.5:
            scene = flip(scene)
        images.append(render(scene))
        targets.append(cell_ids(label_grid(scene)))
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    return pixels, torch.tensor(np.stack(targets))


def project(tower, projector, pixels):
    hidden = tower(pixel_values=pixels, output_hidden_states=True).hidden_states[-1][:, 1:]
    return projector(hidden)


def decode_cells(tokens: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Nearest grid word (bg / colours) of each projected token, as a token id."""
    words = torch.tensor([Q.VOCAB.index(BG)] + [Q.VOCAB.index(c) for c in COLOR_NAMES])
    dist = torch.cdist(tokens.reshape(-1, tokens.shape[-1]), table[words])
    return words[dist.argmin(-1)].reshape(tokens.shape[:-1])


def train_vision(out: Path, seed: int, steps: int, log: Log) -> None:
    from transformers import CLIPVisionModel
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

    _, vision_cfg, llava_cfg = configs()
    torch.manual_seed(seed)
    tower = CLIPVisionModel(vision_cfg)
    projector = LlavaMultiModalProjector(llava_cfg)
    table = embedding_table(seed)
    processor = image_processor()
    params = list(tower.parameters()) + list(projector.parameters())
    opt = torch.optim.Adam(params, lr=1e-3)
    rng = random.Random(f"vision:{seed}")
    bg = Q.VOCAB.index(BG)
    held_pixels, held_targets = vision_batch(random.Random(f"vision-heldout:{seed}"), processor, 16)
    for step in range(steps):
        lr = 1e-3 * min(1.0, (step + 1) / 50) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        for group in opt.param_groups:
            group["lr"] = lr
        pixels, target_ids = vision_batch(rng, processor, 4)
        pred = project(tower, projector, pixels)
        target = table[target_ids]
        per = (1 - torch.nn.functional.cosine_similarity(pred, target, dim=-1)) + 0.1 * (pred - target).pow(2).mean(-1)
        weight = 1 + 4 * (target_ids != bg).float()
        loss = (per * weight).sum() / weight.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 25 == 0:
            log(stage="vision", step=step, loss=round(float(loss), 4), lr=round(lr, 6))
        if (step + 1) % 200 == 0 or step + 1 == steps:
            with torch.no_grad():
                got = decode_cells(project(tower, projector, held_pixels), table)
            obj = held_targets != bg
            log(
                stage="vision",
                step=step + 1,
                heldout_object_cells=round(float((got == held_targets)[obj].float().mean()), 4),
                heldout_bg_cells=round(float((got == held_targets)[~obj].float().mean()), 4),
            )
    torch.save({"tower": tower.state_dict(), "projector": projector.state_dict()}, out / "vision.pt")


# -- assembly --------------------------------------------------------------------------------------
def assemble(work: Path, out: Path) -> None:
    from transformers import LlavaForConditionalGeneration, LlavaProcessor

    _, _, llava_cfg = configs()
    model = LlavaForConditionalGeneration(llava_cfg)
    lm = torch.load(work / "lm.pt")
    vision = torch.load(work / "vision.pt")
    model.model.language_model.load_state_dict({k[len("model.") :]: v for k, v in lm.items() if k.startswith("model.")})
    model.lm_head.load_state_dict({"weight": lm["lm_head.weight"]})
    model.model.vision_tower.load_state_dict(vision["tower"])
    model.model.multi_modal_projector.load_state_dict(vision["projector"])
    model.generation_config.eos_token_id = 2
    model.generation_config.pad_token_id = Q.VOCAB.index("<pad>")
    model.generation_config.bos_token_id = 1
    processor = LlavaProcessor(
        image_processor=image_processor(),
        tokenizer=Q.build_tokenizer(),
        patch_size=PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA15_CHAT_TEMPLATE,
    )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/testbed/model")
    parser.add_argument("--work", default=".cache/testbed_train")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lm-steps", type=int, default=700, help="steps of the final 24x24 phase")
    parser.add_argument("--vision-steps", type=int, default=1500)
    parser.add_argument("--stage", choices=("all", "lm", "vision", "assemble"), default="all")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    if args.stage == "lm":
        train_lm(work, args.seed, args.lm_steps, Log(work / "lm_log.jsonl"))
    elif args.stage == "vision":
        train_vision(work, args.seed, args.vision_steps, Log(work / "vision_log.jsonl"))
    elif args.stage == "assemble":
        assemble(work, out)
    else:
        t0 = time.time()
        common = ["--work", str(work), "--seed", str(args.seed)]
        common += ["--lm-steps", str(args.lm_steps), "--vision-steps", str(args.vision_steps)]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        procs = [
            subprocess.Popen([sys.executable, "-m", "mmtok.testbed.train", "--stage", s, *common], env=env)
            for s in ("lm", "vision")
        ]
        codes = [p.wait() for p in procs]
        if any(codes):
            raise SystemExit(f"a training stage failed: exit codes {codes}")
        assemble(work, out)
        log = (work / "lm_log.jsonl").read_text() + (work / "vision_log.jsonl").read_text()
        (out / "train_log.jsonl").write_text(log)
        print(f"testbed model written to {out} in {time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
