"""Time to first token (vision + selection + prefill) per pruner and budget, measured side by side.

The model is a random LLaVA-1.5- (or LLaVA-NeXT-) shaped checkpoint built in code with real HF
classes: the vision tower has CLIP-L/336's widths and token counts (1024 wide, 16 heads, MLP 4096,
336 px / 14 px patches = 576 tokens per crop) but `--vision-layers` layers instead of 24, and the
LLM is a scaled-down Llama (`--llm-width`, `--llm-layers`), so a request takes about a second on a
CPU. Per configuration it reports, as medians over `--repeats` interleaved rounds:

- the time to first token (`model.generate(max_new_tokens=1)`), its vision and selection parts
  (the pruner's own timers), and the LLM part (the rest);
- `speedup`: unpruned TTFT / this TTFT, and `llm_speedup`: the same for the LLM part alone,
  beside `flops_speedup`: the FLOPs-ideal LLM speed-up (`mmtok.timing.prefill_flops`);
- `overhead_pct`: the injection overhead. `native` is the same model given natively, through plain
  HF `generate(inputs_embeds=...)`, a sequence of the pruned request's final length; the overhead
  is the pruned request's TTFT against vision + selection (measured inside it) + that native
  prefill, and `llm_overhead_pct` compares the LLM parts alone. For `none` the native request is
  the unmodified model's own `generate(**inputs)`. Target: <= 5 % for pre-LLM pruners.
- `fastv` with every token kept computes its scores and drops nothing, so its TTFT over `none`'s is
  the scoring cost; the target is <= 5 % of the unpruned prefill. `fastv` at the budgets runs in
  `budget_mode="kept"` (R = budget, K = 2), its FLOPs from the per-layer sequence lengths.

    python scripts/bench_prefill.py                         # LLaVA-1.5 then LLaVA-NeXT (5 crops), CPU
    python scripts/bench_prefill.py --family llava --repeats 5
    python scripts/bench_prefill.py --device cuda --family llava --llm-shape 7b --vision-layers 24
    python scripts/bench_prefill.py --device cuda --family llava_next --llm-shape 13b --vision-layers 24
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass

import benchlib
import numpy as np
import torch
from PIL import Image

from mmtok.pruners import build_pruner
from mmtok.timing import prefill_flops, prefill_flops_per_layer

PRE_LLM = ("random", "mmtok", "visionzip", "divprune")
BUDGETS = {"llava": (576, 192, 128, 64, 16, 4), "llava_next": (640, 320, 160)}
# hidden, layers, heads, MLP width of the real LLMs (Vicuna-7B / -13B); "mini" is a small shape that
# takes the same direct-on-device path (its CPU dry run in scripts/gpu_check.sh).
LLM_SHAPES = {"7b": (4096, 32, 32, 11008), "13b": (5120, 40, 40, 13824), "mini": (256, 4, 2, 512)}
QUESTION = "Is there a red car next to the person on the left side of the street?"


@dataclass
class Row:
    family: str
    config: str
    pruner: str
    budget: str
    vision_tokens: int
    prompt_tokens: int
    ttft_ms: float
    vision_ms: float
    select_ms: float
    llm_ms: float
    speedup: float
    llm_speedup: float
    flops_speedup: float
    native_ms: float
    overhead_pct: float
    llm_overhead_pct: float
    repeats: int
    device: str
    dtype: str
    threads: int


def build_model(family, args, device, dtype):
    from transformers import AutoConfig, AutoProcessor, LlavaForConditionalGeneration, LlavaNextForConditionalGeneration

    from mmtok.models.llava.tiny import build_tiny

    clip_l = {
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_attention_heads": 16,
        "num_hidden_layers": args.vision_layers,
        "projection_dim": 768,
    }
    cls = LlavaNextForConditionalGeneration if family == "llava_next" else LlavaForConditionalGeneration
    if args.llm_shape == "scaled":
        path = build_tiny(
            tempfile.mkdtemp(prefix=f"bench-{family}-"),
            family,
            image_size=336,
            patch_size=14,
            text_layers=args.llm_layers,
            text_hidden=args.llm_width,
            vision=clip_l,
        )
        return cls.from_pretrained(path, dtype=dtype).to(device).eval(), AutoProcessor.from_pretrained(path)
    # The real decoder shapes (vocabulary stays the tiny one): a checkpoint of a 7B / 13B model would
    # mean writing 28 / 52 GB of float32 to disk and reading it back, so only the processor and the
    # config come from a small checkpoint, and the model is built from that config with random
    # weights directly on the device, in the benchmark's dtype.
    path = build_tiny(
        tempfile.mkdtemp(prefix=f"bench-{family}-"), family, image_size=336, patch_size=14, text_layers=1, vision=clip_l
    )
    hidden, layers, heads, mlp = LLM_SHAPES[args.llm_shape]
    config = AutoConfig.from_pretrained(path)
    for key, value in {
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": heads,
        "head_dim": hidden // heads,
        "intermediate_size": mlp,
    }.items():
        setattr(config.text_config, key, value)
    torch.manual_seed(0)
    with torch.device(device):
        model = cls._from_config(config, dtype=dtype)
    return model.eval(), AutoProcessor.from_pretrained(path)


def run_family(family, args, device, dtype, dtype_name, timer, info):
    model, processor = build_model(family, args, device, dtype)
    conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    # NeXT: a square image takes the 2 x 2 grid of tiles, so 5 crops (base + 4) of 576 tokens.
    size = (672, 672) if family == "llava_next" else (640, 480)
    pixels = (np.random.RandomState(0).rand(size[1], size[0], 3) * 255).astype("uint8")
    batch = processor(
        images=[Image.fromarray(pixels)],
        text=[processor.apply_chat_template(conv, add_generation_prompt=True)],
        return_tensors="pt",
    ).to(device)
    if "pixel_values" in batch:
        batch["pixel_values"] = batch["pixel_values"].to(dtype)
    layers = model.config.text_config.num_hidden_layers
    hidden = model.config.text_config.hidden_size

    splits: dict[str, list[tuple[float, float]]] = {}  # per config and round: (vision ms, select ms)
    lengths: dict[str, int] = {}
    generate = dict(max_new_tokens=1, do_sample=False)

    def with_pruner(spec, pruner):
        def call():
            with pruner(model, tokenizer=processor.tokenizer, questions=[QUESTION]):
                ms, _ = timer.measure(lambda: model.generate(**batch, **generate))
            stats = pruner.last_stats
            splits.setdefault(spec, []).append((stats.vision_s * 1e3, stats.select_s * 1e3))
            lengths[spec] = pruner.request.prompt_length
            return ms

        return spec, call

    def native(length):
        embeds = torch.randn(1, length, hidden, generator=torch.Generator().manual_seed(length)).to(device, dtype)
        mask = torch.ones(1, length, dtype=torch.long, device=device)
        return lambda: timer.measure(lambda: model.generate(inputs_embeds=embeds, attention_mask=mask, **generate))[0]

    def plain():
        return timer.measure(lambda: model.generate(**batch, **generate))[0]

    configs = dict([("hf-unmodified", plain), with_pruner("none", build_pruner("none"))])
    meta = {"none": ("none", "")}
    if family == "llava":
        configs.update([with_pruner("fastv:keep-all", build_pruner("fastv", budget=None))])
        meta["fastv:keep-all"] = ("fastv", "keep-all")
    for b in args.budgets or BUDGETS[family]:
        for name in args.pruners:
            configs.update([with_pruner(f"{name}:{b}", build_pruner(name, budget=b))])
            meta[f"{name}:{b}"] = (name, str(b))
        if family == "llava" and b < 576 and "fastv" in args.in_llm:
            configs.update([with_pruner(f"fastv-kept:{b}", build_pruner("fastv", budget=b, budget_mode="kept"))])
            meta[f"fastv-kept:{b}"] = ("fastv", f"R={b}")
    with torch.no_grad():
        for fn in configs.values():  # one warm-up round that also tells the final lengths
            fn()
        # Each native prefill runs right after the pruned requests of its length, so that a load
        # that drifts within a round on a shared machine biases neither side of the overhead.
        ordered = {}
        for spec, fn in configs.items():
            ordered[spec] = fn
            if spec in meta and meta[spec][0] not in ("fastv", "none"):
                following = list(configs)[list(configs).index(spec) + 1 :]
                nxt = next((s for s in following if s in meta and meta[s][0] not in ("fastv", "none")), None)
                if nxt is None or lengths[nxt] != lengths[spec]:
                    ordered.setdefault(f"native:{lengths[spec]}", native(lengths[spec]))
        configs = ordered
        splits.clear()
        times, _ = benchlib.interleaved(configs, _Untimed(), args.repeats, max(args.warmup - 1, 0))
        splits_timed = {s: v[-args.repeats :] for s, v in splits.items()}

    def med(spec, part):
        if part == "ttft":
            return benchlib.median(times[spec])
        return benchlib.median([v[0 if part == "vision" else 1] for v in splits_timed[spec]])

    text_tokens = int((batch["input_ids"] != model.config.image_token_id).sum())
    base = med("none", "ttft")
    base_llm = base - med("none", "vision") - med("none", "select")
    full_len = lengths["none"]
    rows = []
    for spec, (name, budget) in meta.items():
        ttft, vis, sel = med(spec, "ttft"), med(spec, "vision"), med(spec, "select")
        llm = ttft - vis - sel
        length = lengths[spec]
        if name == "fastv" and budget.startswith("R="):
            r = int(budget[2:])
            seqs = [full_len] * 2 + [text_tokens + r] * (layers - 2)
            flops = prefill_flops(model.config, full_len) / prefill_flops_per_layer(model.config, seqs)
            native_ms, overhead, llm_overhead = float("nan"), float("nan"), float("nan")
            vtokens = r
        else:
            flops = prefill_flops(model.config, full_len) / prefill_flops(model.config, length)
            if name == "none":
                native_ms = med("hf-unmodified", "ttft")
                overhead = 100 * (ttft / native_ms - 1)
                llm_overhead = float("nan")
            elif name == "fastv":
                native_ms = base
                overhead = 100 * (ttft / base - 1)  # the scoring cost, against the unpruned request
                llm_overhead = 100 * (ttft - base) / base_llm  # ... against the unpruned prefill
            else:
                native_ms = med(f"native:{length}", "ttft")
                overhead = 100 * (ttft / (vis + sel + native_ms) - 1)
                llm_overhead = 100 * (llm / native_ms - 1)
            vtokens = length - text_tokens
        rows.append(
            Row(
                family,
                spec,
                name,
                budget,
                vtokens,
                length,
                ttft,
                vis,
                sel,
                llm,
                base / ttft,
                base_llm / llm,
                flops,
                native_ms,
                overhead,
                llm_overhead,
                args.repeats,
                info["device"],
                dtype_name,
                torch.get_num_threads(),
            )
        )
        print(
            f"{family:<10} {spec:<16} tokens {length:>5} ttft {ttft:8.1f} ms (vision {vis:6.1f}, select {sel:6.1f}, "
            f"llm {llm:7.1f}) speed-up {base / ttft:5.2f} llm {base_llm / llm:5.2f} flops {flops:5.2f} "
            f"overhead {overhead:+6.1f}% llm {llm_overhead:+6.1f}%",
            flush=True,
        )
    return rows


class _Untimed:
    """`interleaved` expects a timer; here each config times its own `generate` (TTFT) inside."""

    def measure(self, fn):
        ms = fn()
        return ms, None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", nargs="+", default=["llava", "llava_next"], choices=["llava", "llava_next"])
    ap.add_argument("--pruners", nargs="+", default=list(PRE_LLM), choices=list(PRE_LLM))
    ap.add_argument("--in-llm", nargs="*", default=["fastv"], choices=["fastv"])
    ap.add_argument("--budgets", nargs="+", type=int, default=None, help="default: 576..4 (1.5), 640/320/160 (NeXT)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None, help="default: float32 on CPU, float16 on CUDA")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument(
        "--llm-shape",
        default="scaled",
        choices=["scaled", *LLM_SHAPES],
        help="scaled: --llm-width x --llm-layers; 7b / 13b: the Vicuna decoder shapes (GPU); mini: a dry run",
    )
    ap.add_argument("--llm-width", type=int, default=1024)
    ap.add_argument("--llm-layers", type=int, default=8)
    ap.add_argument("--vision-layers", type=int, default=2, help="CLIP-L has 24; the LLM is scaled down too")
    ap.add_argument("--tag", default="", help="file names prefill_<family>_<tag>_<device>.* (e.g. 7b)")
    ap.add_argument("--out", default=str(benchlib.OUT))
    args = ap.parse_args(argv)
    device, dtype_name, dtype = benchlib.common_setup(ap, args)
    if args.vision_layers < 2:
        ap.error("--vision-layers must be >= 2 (LLaVA reads the second-to-last CLIP layer)")
    timer = benchlib.Timer(device)
    info = benchlib.machine(device)
    llm_desc = (
        f"Llama {args.llm_width} wide x {args.llm_layers} layers"
        if args.llm_shape == "scaled"
        else f"the {args.llm_shape} Vicuna decoder shape"
    )
    cmd = "python " + " ".join(["scripts/bench_prefill.py", *(argv if argv is not None else sys.argv[1:])])
    out = benchlib.Path(args.out)
    for family in args.family:  # one file and one README section per family and device
        rows = run_family(family, args, device, dtype, dtype_name, timer, info)
        tag = f"{family}_{args.tag}_{device.type}" if args.tag else f"{family}_{device.type}"
        benchlib.write_csv(out / f"prefill_{tag}.csv", rows)
        table = benchlib.md_table(
            [
                "config",
                "prompt tokens",
                "TTFT ms",
                "vision ms",
                "select ms",
                "LLM ms",
                "speed-up",
                "LLM speed-up",
                "FLOPs-ideal",
                "overhead %",
                "LLM overhead %",
            ],
            [
                [
                    r.config,
                    r.prompt_tokens,
                    f"{r.ttft_ms:.1f}",
                    f"{r.vision_ms:.1f}",
                    f"{r.select_ms:.1f}",
                    f"{r.llm_ms:.1f}",
                    f"{r.speedup:.2f}",
                    f"{r.llm_speedup:.2f}",
                    f"{r.flops_speedup:.2f}",
                    "" if r.overhead_pct != r.overhead_pct else f"{r.overhead_pct:+.1f}",
                    "" if r.llm_overhead_pct != r.llm_overhead_pct else f"{r.llm_overhead_pct:+.1f}",
                ]
                for r in rows
            ],
        )
        section = (
            f"## Time to first token, {family} ({device.type})\n\n`{cmd}`: medians of {args.repeats} interleaved "
            f"rounds after {args.warmup} warm-up round(s), {dtype_name}; vision tower CLIP-L/336 widths with "
            f"{args.vision_layers} layers, LLM {llm_desc} (random weights); file `prefill_{tag}.csv`. "
            "`overhead %`: pruned request vs vision + selection + a native prefill of the same length "
            "(`none`: vs the unmodified model; `fastv:keep-all`: its scoring cost vs `none`, and in the LLM "
            "column vs the unpruned LLM prefill).\n\n" + benchlib.md_machine(info) + "\n" + table
        )
        benchlib.write_text(out / f"prefill_{tag}.md", section)
        benchlib.update_readme(out)


if __name__ == "__main__":
    main()
