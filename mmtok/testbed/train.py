"""Train the testbed LLaVA (v2) from scratch on CPU: `python -m mmtok.testbed.train --out results/testbed/model`.

Stages (1 and 2 run at the same time, one core each; 1b follows 1):
- stage 1 "lm": a 2-layer Llama on text only. Its input embeddings are frozen to a fixed random
  N(0, 1) table whose 11 cell words (bg + 10 colours) are rescaled to one norm (`embedding_table`);
  a scene is written as one word per patch-grid cell, followed by several questions in the
  evaluation prompt format, the loss on each answer (+ EOS). A second loss term asks for the
  answer at the question's key word too (without it the answer after "?" alone stayed at chance for
  minutes). Length curriculum 6x6 -> 12x12 -> 24x24 cells, switched on held-out accuracy; in the
  24x24 phase every 4th batch shows an ordered subset of 4-144 cells drawn with object cells
  weighted w in {1, 10, 100} per example (answers from the cells shown): uniform subsets alone left
  an LLM that says "yes" to a kept set dense with object cells, which penalised every pruner that
  seeks objects (an oracle scored below random).
- stage 1b "blind": two content-blind decoder layers are put in front of the stage-1 layers and the
  4-layer stack is fine-tuned (whole grids asked mostly size questions, alternating with object-biased
  subsets asked every question kind about the cells shown). Their q/k/v/gate/up weights see nothing
  of the span of the 11 cell-word embeddings (W <- W (I - P)), their o/down weights write nothing into
  it (W <- (I - P) W), both re-applied after every step, and their RMSNorm weights stay at 1 (a
  learnt gain would mix span and non-span coordinates). The image tokens lie in that span (P is folded into the
  projector), so decoder layers 0-1 cannot read image content: the question has not looked at the
  image before layer 2, and a method that prunes by layer-1 attention (FastV with K=2) removes
  information the LLM has not read yet, as on LLaVA-1.5. Their o/down weights start at zero, so
  the stack starts as the stage-1 model.
- stage 2 "vision": a 3-layer CLIP tower + transformers' `LlavaMultiModalProjector`; each of the
  576 projected patch tokens of hidden_states[-2] (LLaVA's `vision_feature_layer`) is regressed onto
  the frozen embedding of its cell word ((1 - cos) + 0.1 MSE, object patches x5), and a linear
  head on the CLS output (`pooler_output`, the last layer) predicts which colours are visible (BCE,
  weight 0.5), so the CLS token's attention, which VisionZip / VisPruner / PruMerge+ rank by,
  gathers on object patches. The head is dropped at assembly; the last layer then serves only
  the CLS signals, as CLIP-L's last layer does for LLaVA-1.5.
Then `assemble` loads everything into `LlavaForConditionalGeneration` (strict: nothing missing),
folds P into the projector's `linear_2` (weight <- P W, bias <- P b), saves it with its processor,
and scores it unpruned on scenes_pope / scenes_gqa through the evaluation path. Deterministic in
the seed (one thread per stage). Times, CPU times, load averages and held-out accuracies per stage
go to `train_summary.{json,md}` beside the weights.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
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
BLIND_LAYERS = 2  # decoder layers 0..BLIND_LAYERS-1 cannot read image content (stage 1b)
CONTENT_LAYERS = 2  # the stage-1 layers, behind the blind ones
TOWER_LAYERS = 3  # the projector reads hidden_states[-2]; the last layer serves the CLS signals
IMAGE_MEAN = [0.48145466, 0.4578275, 0.40821073]
IMAGE_STD = [0.26862954, 0.26130258, 0.27577711]
KIND_WEIGHTS = {"exist": 0.45, "choose": 0.2, "size": 0.2, "bigcolor": 0.15}
# stage 1b's whole-grid batches ask mostly size questions: the stage-1 LLM of seed 0 stalled at
# ~0.67 on them (a colour's cell count is the one thing presence alone does not answer); its subsets
# ask every kind, so that size and big-colour questions on a pruned image get an answer in format
BLIND_KIND_WEIGHTS = {"exist": 0.3, "choose": 0.1, "size": 0.5, "bigcolor": 0.1}
OBJECT_WEIGHTS = (1, 10, 100)  # object-cell weight of a subset example (1: uniform subset)
BLIND_LR = 1e-3
PRESENCE_WEIGHT = 0.5  # the CLS presence loss beside the patch regression
# stage 1's short-sequence phases: (grid, batch size, questions per scene, switch accuracy, max steps)
CURRICULUM = ((6, 32, 8, 0.80, 300), (12, 16, 8, 0.90, 400))


# -- shared pieces ---------------------------------------------------------------------------------
def cell_words() -> torch.Tensor:
    """Token ids of the grid words, in label order (bg, then COLOR_NAMES)."""
    return torch.tensor([Q.VOCAB.index(BG)] + [Q.VOCAB.index(c) for c in COLOR_NAMES])


def embedding_table(seed: int, vocab: int = len(Q.VOCAB)) -> torch.Tensor:
    """The frozen input embeddings: N(0, 1) rows, the cell words rescaled to norm sqrt(HIDDEN), so
    that no grid word differs from another by its length (RMSNorm would pass that on)."""
    table = torch.randn(vocab, HIDDEN, generator=torch.Generator().manual_seed(seed))
    words = cell_words()
    table[words] = torch.nn.functional.normalize(table[words], dim=-1) * math.sqrt(HIDDEN)
    return table


def span_projection(table: torch.Tensor) -> torch.Tensor:
    """P [HIDDEN, HIDDEN]: the orthogonal projection onto the span of the cell-word embeddings."""
    basis, _ = torch.linalg.qr(table[cell_words()].T.double())
    return (basis @ basis.T).float()


def cell_ids(labels: np.ndarray) -> np.ndarray:
    """Token id of each cell's word (bg / colour), raster order."""
    return cell_words().numpy()[labels.reshape(-1)]


def configs(text_layers: int = BLIND_LAYERS + CONTENT_LAYERS):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    text = LlamaConfig(
        vocab_size=len(Q.VOCAB),
        hidden_size=HIDDEN,
        intermediate_size=512,
        num_hidden_layers=text_layers,
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
        num_hidden_layers=TOWER_LAYERS,
        num_attention_heads=4,
        image_size=IMAGE_SIZE,
        patch_size=PATCH,
        projection_dim=HIDDEN,
    )
    llava = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=Q.VOCAB.index(Q.IMAGE_TOKEN),
        vision_feature_layer=-2,
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
        record = {"t": round(time.time() - self.t0, 1), "load1": round(os.getloadavg()[0], 2), **record}
        line = json.dumps(record)
        self.file.write(line + "\n")
        self.file.flush()
        print(line, flush=True)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def finish(log: Log, stage: str, **heldout) -> None:
    """The stage's closing record: wall and CPU seconds, the held-out accuracies."""
    log(stage=stage, done=True, wall_s=round(time.time() - log.t0, 1), cpu_s=round(cpu_seconds(), 1), **heldout)


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


def draw_questions(
    rng: random.Random, scene, cells, grid: int, k: int, kinds=Q.KINDS, weights=KIND_WEIGHTS
) -> list[Q.Question]:
    names = [n for n in weights if n in kinds]
    out = []
    for _ in range(k):
        kind = rng.choices(names, [weights[n] for n in names])[0]
        q = Q.ask(rng, scene, cells, kind, grid) or Q.ask(rng, scene, cells, "exist", grid)
        out.append(q)
    return out


def biased_subset(rng: random.Random, labels: np.ndarray, n: int, weight: int) -> list[int]:
    """n distinct cells (raster order), drawn without replacement with object cells `weight` times as
    likely as background cells (Efraimidis-Spirakis keys u ** (1 / w))."""
    keys = [rng.random() ** (1.0 / (weight if v else 1)) for v in labels.tolist()]
    return sorted(sorted(range(len(keys)), key=keys.__getitem__, reverse=True)[:n])


def scene_example(
    rng: random.Random,
    grid: int,
    k: int,
    subset: bool = False,
    weight: int | None = None,
    kind_weights=KIND_WEIGHTS,
    subset_kinds=("exist", "choose"),
):
    """(cell word ids, questions) of a new scene: the whole grid (question kinds drawn by `kind_weights`), or
    (subset) 4-144 of its cells with object weight `weight` (drawn from OBJECT_WEIGHTS when None), asked
    `subset_kinds` about the cells shown (a size question only where the kept cells still show the
    object's true size class, `scene_questions.size_classes`)."""
    scene = sample_scene(rng)
    labels = label_grid(scene, grid)
    ids = cell_ids(labels)
    if subset:
        weight = rng.choice(OBJECT_WEIGHTS) if weight is None else weight
        keep = biased_subset(rng, labels.reshape(-1), rng.randint(4, 144), weight)
        ids = ids[keep]
        cells = counts(labels.reshape(-1)[keep])
        qs = draw_questions(rng, scene, cells, grid, k, kinds=subset_kinds)
    else:
        # size questions need cells finer than 6x6 (a small object covers no 56-px cell)
        names = Q.KINDS if grid >= 12 else ("exist", "choose")
        qs = draw_questions(rng, scene, counts(labels), grid, k, kinds=names, weights=kind_weights)
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


def heldout_dense(rng_seed: int, n: int = 240) -> list:
    """Held-out 24x24 subsets dense with object cells (weight 100), every question kind: where the LLM of
    v1 said "yes", and where an LLM never asked about size on a subset answers out of format."""
    rng = random.Random(f"heldout-dense:{rng_seed}")
    return [scene_example(rng, GRID, 1, subset=True, weight=100, subset_kinds=Q.KINDS) for _ in range(n)]


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
    out = {k: round(sum(v) / len(v), 3) for k, v in right.items()}
    out["all"] = round(sum(sum(v) for v in right.values()) / sum(len(v) for v in right.values()), 3)
    return out


def lm_step(model, opt, params, encoder: Encoder, examples) -> float:
    ids, labels, mask = batch(encoder, examples)
    # labels sit at the position that predicts them (no shift, unlike HF's causal-LM loss)
    logits = model(input_ids=ids, attention_mask=mask).logits
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    return float(loss.detach())


def train_lm(out: Path, seed: int, steps24: int, log: Log) -> None:
    from transformers import LlamaForCausalLM

    text_cfg, _, _ = configs(CONTENT_LAYERS)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(text_cfg)
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(embedding_table(seed))
    model.model.embed_tokens.weight.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-3, weight_decay=0.01)
    encoder = Encoder()
    rng = random.Random(f"lm:{seed}")
    phases = [*CURRICULUM, (GRID, 8, 7, None, steps24)]
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
            loss = lm_step(model, opt, params, encoder, [scene_example(rng, grid, k, subset) for _ in range(bs)])
            step += 1
            if s % 25 == 0:
                log(stage="lm", step=step, grid=grid, loss=round(loss, 4), lr=round(lr, 6))
            if (s + 1) % 100 == 0 or s + 1 == max_steps:
                acc = lm_accuracy(model, encoder, held)
                log(stage="lm", step=step, grid=grid, heldout=acc)
                if switch is not None and acc["all"] >= switch:
                    break
    torch.save(model.state_dict(), out / "lm.pt")
    finish(log, "lm", heldout=acc, heldout_dense=lm_accuracy(model, encoder, heldout_dense(seed)))


# -- stage 1b: content-blind layers in front -------------------------------------------------------
@torch.no_grad()
def make_blind(model, proj: torch.Tensor) -> None:
    """Layers 0..BLIND_LAYERS-1 read nothing of, and write nothing into, the span `proj` projects on."""
    rest = torch.eye(proj.shape[0]) - proj
    for layer in model.model.layers[:BLIND_LAYERS]:
        attn, mlp = layer.self_attn, layer.mlp
        for linear in (attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj):
            linear.weight.copy_(linear.weight @ rest)
        for linear in (attn.o_proj, mlp.down_proj):
            linear.weight.copy_(rest @ linear.weight)


def train_blind(out: Path, seed: int, steps: int, log: Log) -> None:
    from transformers import LlamaForCausalLM

    text_cfg, _, _ = configs()
    torch.manual_seed(seed)
    model = LlamaForCausalLM(text_cfg)
    stage1 = torch.load(out / "lm.pt")
    prefix = "model.layers."
    moved = {}
    for key, value in stage1.items():
        if key.startswith(prefix):
            index, rest = key[len(prefix) :].split(".", 1)
            key = f"{prefix}{int(index) + BLIND_LAYERS}.{rest}"
        moved[key] = value
    missing, unexpected = model.load_state_dict(moved, strict=False)
    assert not unexpected and all(k.startswith(prefix) and int(k.split(".")[2]) < BLIND_LAYERS for k in missing)
    proj = span_projection(stage1["model.embed_tokens.weight"])
    model.model.embed_tokens.weight.requires_grad_(False)
    with torch.no_grad():
        for layer in model.model.layers[:BLIND_LAYERS]:
            layer.self_attn.o_proj.weight.zero_()  # the stack starts as the stage-1 model
            layer.mlp.down_proj.weight.zero_()
            for norm in (layer.input_layernorm, layer.post_attention_layernorm):
                norm.weight.fill_(1.0)
                norm.weight.requires_grad_(False)
    make_blind(model, proj)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=BLIND_LR, weight_decay=0.01)
    encoder = Encoder()
    rng = random.Random(f"blind:{seed}")
    held, dense = heldout(seed, GRID), heldout_dense(seed)
    log(stage="blind", step=0, heldout=lm_accuracy(model, encoder, held))
    for s in range(steps):
        lr = BLIND_LR * min(1.0, (s + 1) / 20) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s / steps)))
        for group in opt.param_groups:
            group["lr"] = lr
        subset = s % 2 == 1  # every other batch a (cheap) object-biased subset
        examples = [
            scene_example(rng, GRID, 7, subset, kind_weights=BLIND_KIND_WEIGHTS, subset_kinds=Q.KINDS) for _ in range(8)
        ]
        loss = lm_step(model, opt, params, encoder, examples)
        make_blind(model, proj)
        if s % 25 == 0:
            log(stage="blind", step=s + 1, loss=round(loss, 4), lr=round(lr, 6))
        if (s + 1) % 100 == 0 and s + 1 < steps:
            log(stage="blind", step=s + 1, heldout=lm_accuracy(model, encoder, held))
    torch.save(model.state_dict(), out / "lm_blind.pt")
    finish(log, "blind", heldout=lm_accuracy(model, encoder, held), heldout_dense=lm_accuracy(model, encoder, dense))


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


def presence(target_ids: torch.Tensor) -> torch.Tensor:
    """[B, colours] 1.0 where a colour has a visible cell."""
    return (target_ids[:, :, None] == cell_words()[1:]).any(dim=1).float()


def tower_pass(tower, projector, pixels):
    """(projected patch tokens of hidden_states[-2], the CLS output the presence head reads)."""
    out = tower(pixel_values=pixels, output_hidden_states=True)
    return projector(out.hidden_states[-2][:, 1:]), out.pooler_output


def decode_cells(tokens: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Nearest grid word (bg / colours) of each projected token, as a token id."""
    words = cell_words()
    dist = torch.cdist(tokens.reshape(-1, tokens.shape[-1]), table[words])
    return words[dist.argmin(-1)].reshape(tokens.shape[:-1])


@torch.no_grad()
def cls_object_ratio(tower, pixels, target_ids: torch.Tensor) -> float:
    """Median over images of (mean CLS attention per object patch) / (per background patch), at the
    layer whose output the projector reads (what VisionZip and VisPruner rank by), heads averaged."""
    from mmtok.pruners import cls_attention_and_keys  # defers the pruners (unused while training the LLM)

    states = tower(pixel_values=pixels, output_hidden_states=True).hidden_states
    layers = (tower.vision_model if hasattr(tower, "vision_model") else tower).encoder.layers
    layer = layers[TOWER_LAYERS - 2]
    probs, _ = cls_attention_and_keys(layer.self_attn, layer.layer_norm1(states[TOWER_LAYERS - 2]))
    per_patch = probs.mean(dim=1)[:, 1:]
    obj = target_ids != Q.VOCAB.index(BG)
    ratios = [float(a[o].mean() / a[~o].mean()) for a, o in zip(per_patch, obj) if o.any() and (~o).any()]
    return float(np.median(ratios))


def train_vision(out: Path, seed: int, steps: int, log: Log) -> None:
    from transformers import CLIPVisionModel
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

    _, vision_cfg, llava_cfg = configs()
    torch.manual_seed(seed)
    tower = CLIPVisionModel(vision_cfg)
    projector = LlavaMultiModalProjector(llava_cfg)
    head = torch.nn.Linear(HIDDEN, len(COLOR_NAMES))
    table = embedding_table(seed)
    processor = image_processor()
    params = list(tower.parameters()) + list(projector.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=1e-3)
    rng = random.Random(f"vision:{seed}")
    bg = Q.VOCAB.index(BG)
    held_pixels, held_targets = vision_batch(random.Random(f"vision-heldout:{seed}"), processor, 32)

    def held_accuracy() -> dict[str, float]:
        with torch.no_grad():
            tokens, cls = tower_pass(tower, projector, held_pixels)
            got = decode_cells(tokens, table)
            seen = (head(cls) > 0).float()
        obj = held_targets != bg
        return {
            "object_cells": round(float((got == held_targets)[obj].float().mean()), 4),
            "bg_cells": round(float((got == held_targets)[~obj].float().mean()), 4),
            "presence": round(float((seen == presence(held_targets)).float().mean()), 4),
            "cls_object_ratio": round(cls_object_ratio(tower, held_pixels, held_targets), 2),
        }

    for step in range(steps):
        lr = 1e-3 * min(1.0, (step + 1) / 50) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        for group in opt.param_groups:
            group["lr"] = lr
        pixels, target_ids = vision_batch(rng, processor, 4)
        pred, cls = tower_pass(tower, projector, pixels)
        target = table[target_ids]
        per = (1 - torch.nn.functional.cosine_similarity(pred, target, dim=-1)) + 0.1 * (pred - target).pow(2).mean(-1)
        weight = 1 + 4 * (target_ids != bg).float()
        regression = (per * weight).sum() / weight.sum()
        seen = torch.nn.functional.binary_cross_entropy_with_logits(head(cls), presence(target_ids))
        loss = regression + PRESENCE_WEIGHT * seen
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 25 == 0:
            log(stage="vision", step=step, loss=round(float(loss.detach()), 4), presence=round(float(seen.detach()), 4))
        if (step + 1) % 300 == 0 and step + 1 < steps:
            log(stage="vision", step=step + 1, heldout=held_accuracy())
    torch.save({"tower": tower.state_dict(), "projector": projector.state_dict()}, out / "vision.pt")
    finish(log, "vision", heldout=held_accuracy())


# -- assembly --------------------------------------------------------------------------------------
def assemble(work: Path, out: Path) -> None:
    from transformers import LlavaForConditionalGeneration, LlavaProcessor

    _, _, llava_cfg = configs()
    model = LlavaForConditionalGeneration(llava_cfg)
    lm = torch.load(work / "lm_blind.pt")
    vision = torch.load(work / "vision.pt")
    model.model.language_model.load_state_dict({k[len("model.") :]: v for k, v in lm.items() if k.startswith("model.")})
    model.lm_head.load_state_dict({"weight": lm["lm_head.weight"]})
    model.model.vision_tower.load_state_dict(vision["tower"])
    model.model.multi_modal_projector.load_state_dict(vision["projector"])
    # image tokens inside the cell-word span: the blind layers then see none of their content (the
    # regression's small residual outside the span carries colour and would leak it)
    proj = span_projection(lm["model.embed_tokens.weight"])
    linear = model.model.multi_modal_projector.linear_2
    with torch.no_grad():
        linear.weight.copy_(proj @ linear.weight)
        linear.bias.copy_(proj @ linear.bias)
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


def score_unpruned(model_dir: Path, cache: Path, n: int = 300) -> dict[str, dict]:
    """Unpruned scores of the saved model on the table's scene benchmarks, through the evaluation path."""
    from mmtok.eval.evaluate import evaluate  # defers lmms-eval
    from mmtok.eval.protocol import RunProtocol  # defers lmms-eval
    from mmtok.models.loading import load_model  # defers transformers
    from mmtok.pruners import build_pruner  # defers torch
    from mmtok.testbed.scores import Cell, score_row, testbed  # defers lmms-eval

    model, processor, _ = load_model(str(model_dir), dtype="float32", attn_implementation="sdpa", device="cpu")
    scores = {}
    for task in ("scenes_pope", "scenes_gqa"):
        bed = testbed(task, n, cache)
        out = evaluate(
            model,
            processor,
            build_pruner("none"),
            tasks=[bed.task],
            include_path=str(bed.include_path),
            protocol=RunProtocol(progress=False),
        )
        row = score_row(Cell(task, "none", None), out)
        scores[task] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items() if v != ""}
    return scores


def summary_markdown(summary: dict) -> str:
    lines = [
        "# Testbed v2: training summary",
        "",
        f"Written by `make testbed` (mmtok/testbed/train.py, seed {summary['seed']}); the log is train_log.jsonl.",
        f"Wall time {summary['wall_s'] / 60:.1f} min in all on {os.cpu_count()} cores; "
        f"load average (1 min) over the run: mean {summary['load1_mean']:.2f}, max {summary['load1_max']:.2f}.",
        "",
        "| stage | wall (min) | CPU (min) | held-out |",
        "|---|---|---|---|",
    ]
    for name, stage in summary["stages"].items():
        held = "; ".join(f"{k}: {json.dumps(v)}" for k, v in stage.items() if k.startswith("heldout"))
        lines.append(f"| {name} | {stage['wall_s'] / 60:.1f} | {stage['cpu_s'] / 60:.1f} | {held} |")
    lines += ["", "Unpruned, through lmms-eval (300 questions each):", ""]
    for task, row in summary["unpruned"].items():
        lines.append(f"- {task}: " + ", ".join(f"{k} {v}" for k, v in row.items() if isinstance(v, float)))
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/testbed/model")
    parser.add_argument("--work", default=".cache/testbed_train")
    parser.add_argument("--cache", default=os.environ.get("MMTOK_CACHE", ".cache"), help="scene benchmarks")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lm-steps", type=int, default=700, help="steps of stage 1's final 24x24 phase")
    parser.add_argument("--blind-steps", type=int, default=400, help="stage 1b steps")
    parser.add_argument("--vision-steps", type=int, default=1500)
    parser.add_argument("--stage", choices=("all", "lm", "blind", "vision", "assemble"), default="all")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    if args.stage == "lm":
        train_lm(work, args.seed, args.lm_steps, Log(work / "lm_log.jsonl"))
    elif args.stage == "blind":
        train_blind(work, args.seed, args.blind_steps, Log(work / "blind_log.jsonl"))
    elif args.stage == "vision":
        train_vision(work, args.seed, args.vision_steps, Log(work / "vision_log.jsonl"))
    elif args.stage == "assemble":
        assemble(work, out)
    else:
        run_all(args, work, out)


def write_summary(work: Path, out: Path, args, wall_s: float, assemble_s: float, unpruned: dict) -> dict:
    """train_log.jsonl (the stages' logs) and train_summary.{json,md} beside the weights."""
    logs = [work / f"{s}_log.jsonl" for s in ("lm", "blind", "vision")]
    text = "".join(p.read_text() for p in logs)
    (out / "train_log.jsonl").write_text(text)
    records = [json.loads(line) for line in text.splitlines()]
    closing = [r for r in records if r.get("done")]
    stages = {r["stage"]: {k: v for k, v in r.items() if k not in ("t", "load1", "stage", "done")} for r in closing}
    stages["assemble+score"] = {"wall_s": round(assemble_s, 1), "cpu_s": round(cpu_seconds(), 1)}
    loads = [r["load1"] for r in records]
    summary = {
        "seed": args.seed,
        "steps": {"lm_24x24": args.lm_steps, "blind": args.blind_steps, "vision": args.vision_steps},
        "wall_s": round(wall_s, 1),
        "cpu_s": round(sum(s["cpu_s"] for s in stages.values()), 1),
        "load1_mean": round(sum(loads) / len(loads), 2),
        "load1_max": max(loads),
        "stages": stages,
        "unpruned": unpruned,
    }
    (out / "train_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "train_summary.md").write_text(summary_markdown(summary))
    return summary


def run_all(args, work: Path, out: Path) -> None:
    t0 = time.time()
    common = ["--work", str(work), "--seed", str(args.seed)]
    common += ["--lm-steps", str(args.lm_steps), "--blind-steps", str(args.blind_steps)]
    common += ["--vision-steps", str(args.vision_steps)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def start(stage: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "mmtok.testbed.train", "--stage", stage, *common], env=env)

    vision, lm = start("vision"), start("lm")
    codes = [lm.wait()]
    if not codes[0]:
        codes.append(start("blind").wait())
    codes.append(vision.wait())
    if any(codes):
        raise SystemExit(f"a training stage failed: exit codes {codes}")
    t_assemble = time.time()
    assemble(work, out)
    unpruned = score_unpruned(out, Path(args.cache))
    summary = write_summary(work, out, args, time.time() - t0, time.time() - t_assemble, unpruned)
    print(summary_markdown(summary), flush=True)
    print(f"testbed model written to {out} in {summary['wall_s']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
