"""Selection-step latency of every pruner at LLaVA sizes, side by side, with MMTok against its floor.

Inputs have the real shapes (LLaVA-1.5-7B: 576 tokens per crop, projected width D = 4096,
CLIP-L pre-projector width 1024, `--words` = 6 question sub-words; LLaVA-NeXT: 5 crops selected
together) and random values. Cases: 576 -> {192, 64, 16, 4} and 5 x 576 -> 5 x 32. Per case:

- `floor`: what MMTok cannot avoid, the two similarity matmuls and their softmaxes alone
  (inputs already unit-normalised);
- `normalise`: the spec's row normalisation of the three inputs alone (`F.normalize`), which the
  floor leaves out and every implementation pays (it reads and writes all n x D projected
  tokens: at 5 x 576 x 4096 it is memory-bound and not small next to the floor);
- `mmtok` (ours, `method="auto"`), and its two greedy variants `mmtok-dense`, `mmtok-lazy` (on
  CPU: `dense` is the spec's torch greedy and `auto` = dense, `lazy` an exact numpy lazy greedy);
- `spec-dense`: a plain implementation of the spec (normalise, `cat([P, alpha * Q])`, k dense
  greedy steps over the [m + n, n] matrix, batched over crops), the baseline of the speed-up; the
  indices of every MMTok variant are asserted identical to it;
- `random`, `divprune` (per crop on LLaVA-1.5; the default "global" scope over the 2880 packed
  tokens on NeXT), `visionzip` (merge per crop + the projector on the kept tokens);
- `fastv-score` / `sparsevlm-score`: the in-LLM methods' scoring step in one decoder layer of
  the 7B attention shape (one attention row recomputed for FastV; the raters' rows, the top-k and
  the recycling clusters for SparseVLM), over the prompt of that case.
`none` has no selection step (see bench_prefill.py for its request path).

Every configuration is timed interleaved, round by round: `--warmup` untimed runs, then the
median of `--repeats` timed ones. Writes results/bench/selection_<device>.csv and its section of
results/bench/README.md.

    python scripts/bench_selection.py                              # CPU, float32
    python scripts/bench_selection.py --device cuda --dtype float16  # GPU: CUDA events
    python scripts/bench_selection.py --device cuda --llm-width 5120 # LLaVA-NeXT-13B widths
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import benchlib
import torch
import torch.nn.functional as F

from mmtok.pruners import attention_rows
from mmtok.pruners.fastv import fastv_keep
from mmtok.selection.divprune import divprune_select
from mmtok.selection.mmtok import mmtok_select
from mmtok.selection.random import random_select
from mmtok.selection.sparsevlm import recycle, text_raters
from mmtok.selection.visionzip import visionzip_merge, visionzip_split

# (label, crops, tokens per crop, kept per crop)
CASES = [
    ("llava15 576->192", 1, 576, 192),
    ("llava15 576->64", 1, 576, 64),
    ("llava15 576->16", 1, 576, 16),
    ("llava15 576->4", 1, 576, 4),
    ("llavanext 5x576->5x32", 5, 576, 32),
]
# The bars, per case label: (speed-up over spec-dense at least, total / floor at most).
TARGETS = {"llava15 576->64": (3.0, 1.5), "llavanext 5x576->5x32": (2.5, 1.5)}
ALPHA, TAU_T, TAU_V = 0.5, 0.02, 0.2


@dataclass
class Row:
    case: str
    crops: int
    n: int
    k_per_crop: int
    method: str
    median_ms: float
    p10_ms: float
    p90_ms: float
    repeats: int
    device: str
    dtype: str
    threads: int


@dataclass
class Ratio:
    case: str
    ratio: str
    value: float
    target: str
    met: str


def spec_dense_select(text, proj, pre, k, alpha=ALPHA, tau_t=TAU_T, tau_v=TAU_V):
    """The spec written plainly (mmtok.md "Greedy"), batched over crops: the baseline."""
    t, v, w = (F.normalize(x, dim=-1).float() for x in (text, proj, pre))
    m, n = t.shape[-2], v.shape[-2]
    p = torch.softmax(torch.matmul(t, v.mT) / tau_t, dim=-1) / max(m, 1)
    q = torch.softmax(torch.matmul(w, w.mT) / tau_v, dim=-1) / n
    C = torch.cat([p.expand(v.shape[0], m, n), alpha * q], dim=-2)  # [B, m + n, n]
    batch, rows, _ = C.shape
    mask = torch.zeros(batch, n, device=C.device)
    best = C.new_zeros(batch, rows, 1)
    picks = torch.empty(batch, k, dtype=torch.long, device=C.device)
    for step in range(k):
        gain = (C - best).clamp_min(0).sum(dim=1) + mask
        j = gain.argmax(dim=-1)
        picks[:, step] = j
        best = torch.maximum(best, C.gather(2, j.view(batch, 1, 1).expand(batch, rows, 1)))
        mask.scatter_(1, j.unsqueeze(1), float("-inf"))
    return picks.sort(dim=-1).values


def floor(t_unit, v_unit, w_unit):
    p = torch.softmax(torch.matmul(t_unit, v_unit.mT) / TAU_T, dim=-1)
    q = torch.softmax(torch.matmul(w_unit, w_unit.mT) / TAU_V, dim=-1)
    return p, q


def decoder_layer(width: int, device, dtype):
    """One Llama decoder layer of the LLM's attention shape (width / 128 heads of 128); the MLP is
    tiny because the scoring steps never run it."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    cfg = LlamaConfig(
        hidden_size=width,
        intermediate_size=16,
        num_attention_heads=width // 128,
        num_key_value_heads=width // 128,
        max_position_embeddings=8192,
    )
    with torch.device(device):
        layer = LlamaDecoderLayer(cfg, layer_idx=0).to(dtype).eval()
        rotary = LlamaRotaryEmbedding(cfg)
    return layer, rotary


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    ap.add_argument("--dtype", default=None, help="default: float32 on CPU, float16 on CUDA")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--words", type=int, default=6, help="question sub-word tokens (MMTok's text rows)")
    ap.add_argument("--llm-width", type=int, default=4096, help="4096: 7B, 5120: 13B")
    ap.add_argument("--vision-width", type=int, default=1024, help="CLIP-L: 1024")
    ap.add_argument("--prompt-text", type=int, default=64, help="text tokens of the prompt around the image")
    ap.add_argument("--cases", nargs="*", default=None, help="subset of case labels (default: all)")
    ap.add_argument("--out", default=str(benchlib.OUT))
    args = ap.parse_args(argv)
    device, dtype_name, dtype = benchlib.common_setup(ap, args)
    cases = [c for c in CASES if args.cases is None or c[0] in args.cases]
    if not cases:
        ap.error(f"no case matches {args.cases}; valid: {', '.join(c[0] for c in CASES)}")
    timer = benchlib.Timer(device)
    info = benchlib.machine(device)
    gen = torch.Generator().manual_seed(0)
    D, Dv = args.llm_width, args.vision_width
    layer, rotary = decoder_layer(D, device, dtype)
    projector = torch.nn.Sequential(torch.nn.Linear(Dv, D), torch.nn.GELU(), torch.nn.Linear(D, D)).to(device, dtype)
    print(f"device {info['device']}, dtype {dtype_name}, threads {torch.get_num_threads()}, repeats {args.repeats}")
    rows, ratios = [], []

    def rnd(*shape):
        return torch.randn(*shape, generator=gen).to(device, dtype)

    for label, crops, n, k in cases:
        text, proj, pre = rnd(args.words, D), rnd(crops, n, D), rnd(crops, n + 1, Dv)  # pre: CLS at 0
        patches = pre[:, 1:]
        units = [F.normalize(x, dim=-1).float() for x in (text, proj, patches)]
        heads = 16
        cls_att = torch.softmax(torch.randn(crops, heads, n + 1, generator=gen), dim=-1).to(device)
        keys = rnd(crops, n + 1, 64)
        dominant, contextual = visionzip_split(k)
        seq = crops * n + args.prompt_text
        start = args.prompt_text // 2
        hidden = rnd(1, seq, D)
        pos = torch.arange(seq, device=device)[None]
        pos_emb = rotary(hidden, pos)
        last = torch.full((1, 1), seq - 1, device=device)
        span = slice(start, start + crops * n)
        kept = k * crops

        def fastv_score():
            probs = attention_rows(layer, hidden, last, pos_emb, None)[0, 0]
            return fastv_keep(probs[span], kept)

        def sparsevlm_score():
            text_rows = torch.arange(span.stop, seq, device=device)
            raters = text_rows[text_raters(hidden[0, span], hidden[0, span.stop :])]
            score = attention_rows(layer, hidden, raters[None], pos_emb, None)[0][:, span].mean(dim=0)
            order = torch.sort(score, descending=True, stable=True).indices
            pruned = order[kept:].sort().values
            return order[:kept].sort().values, recycle(hidden[0, span][pruned], score[pruned])

        configs = {
            "floor": lambda: floor(*units),
            "normalise": lambda: [F.normalize(x, dim=-1).float() for x in (text, proj, patches)],
            "mmtok": lambda: mmtok_select(text, proj, patches, k),
            "mmtok-dense": lambda: mmtok_select(text, proj, patches, k, method="dense"),
            "mmtok-lazy": lambda: mmtok_select(text, proj, patches, k, method="lazy"),
            "spec-dense": lambda: spec_dense_select(text, proj, patches, k),
            "random": lambda: [random_select(n, k, seed=c, device=device) for c in range(crops)],
            "divprune": (
                (lambda: divprune_select(proj, k))
                if crops == 1
                else (lambda: divprune_select(proj.reshape(crops * n, D), kept))
            ),
            "visionzip": lambda: projector(
                torch.stack([visionzip_merge(pre[c], cls_att[c], keys[c], dominant, contextual) for c in range(crops)])
            ),
            "fastv-score": fastv_score,
            "sparsevlm-score": sparsevlm_score,
        }
        if device.type != "cpu":
            del configs["mmtok-lazy"]  # a host-driven loop of small steps: not meant for a GPU
        with torch.no_grad():
            times, outputs = benchlib.interleaved(configs, timer, args.repeats, args.warmup)
        spec = outputs["spec-dense"]
        for name in ("mmtok", "mmtok-dense", "mmtok-lazy"):
            if name in outputs and not torch.equal(outputs[name].cpu(), spec.cpu()):
                raise AssertionError(f"{label}: {name} picked other tokens than spec-dense")
        med = {name: benchlib.median(ts) for name, ts in times.items()}
        for name, ts in times.items():
            rows.append(
                Row(
                    label,
                    crops,
                    n,
                    k,
                    name,
                    med[name],
                    benchlib.quantile(ts, 0.1),
                    benchlib.quantile(ts, 0.9),
                    len(ts),
                    info["device"],
                    dtype_name,
                    torch.get_num_threads(),
                )
            )
        speedup, over_floor = med["spec-dense"] / med["mmtok"], med["mmtok"] / med["floor"]
        want_speed, want_floor = TARGETS.get(label, (None, None))
        ratios.append(
            Ratio(
                label,
                "spec-dense / mmtok (speed-up)",
                speedup,
                f">= {want_speed}" if want_speed else "",
                "" if want_speed is None else ("yes" if speedup >= want_speed else "no"),
            )
        )
        ratios.append(
            Ratio(
                label,
                "mmtok / floor",
                over_floor,
                f"<= {want_floor}" if want_floor else "",
                "" if want_floor is None else ("yes" if over_floor <= want_floor else "no"),
            )
        )
        print(
            f"{label:<24} "
            + " ".join(f"{name} {med[name]:.2f}" for name in configs)
            + f" | speed-up {speedup:.2f}x, mmtok/floor {over_floor:.2f} (identical indices)"
        )

    out = benchlib.Path(args.out)
    tag = device.type
    benchlib.write_csv(out / f"selection_{tag}.csv", rows)
    benchlib.write_csv(out / f"selection_ratios_{tag}.csv", ratios)
    methods = list(dict.fromkeys(r.method for r in rows))
    table = benchlib.md_table(
        ["case", *methods],
        [
            [label, *(f"{r.median_ms:.2f}" for m in methods for r in rows if r.case == label and r.method == m)]
            for label, *_ in cases
        ],
    )
    ratio_table = benchlib.md_table(
        ["case", "ratio", "value", "target", "met"],
        [[r.case, r.ratio, f"{r.value:.2f}", r.target, r.met] for r in ratios],
    )
    cmd = "python " + " ".join(["scripts/bench_selection.py", *(argv if argv is not None else sys.argv[1:])])
    section = (
        f"## Selection step ({tag})\n\n`{cmd}`: median ms of {args.repeats} interleaved runs after "
        f"{args.warmup} warm-up runs, {dtype_name}, D = {D}, Dv = {Dv}, {args.words} text rows; files "
        f"`selection_{tag}.csv`, `selection_ratios_{tag}.csv`.\n\n"
        + benchlib.md_machine(info)
        + "\n"
        + table
        + "\nMMTok against the spec's plain dense greedy (indices asserted identical) and against its floor:\n\n"
        + ratio_table
    )
    benchlib.write_text(out / f"selection_{tag}.md", section)
    benchlib.update_readme(out)


if __name__ == "__main__":
    main()
