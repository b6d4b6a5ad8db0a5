"""Serving speed of MMTok-pruned LLaVA-1.5 inside vLLM: offline batched throughput and TTFT.

    make bench-vllm                                   # .venv-vllm, CPU, the scaled shapes below
    .venv-vllm/bin/python scripts/bench_vllm.py --device cuda --shape 7b   # a GPU vLLM + the plugin

The model is LLaVA-1.5-shaped with random weights (vLLM's `load_format="dummy"`): the vision tower
has CLIP-L/336's widths and token counts (1024 wide, 16 heads, MLP 4096, 336 px / 14 = 576 patches)
and the LLM is a Llama; `--shape scaled` (default, CPU) takes the shapes of scripts/bench_prefill.py
(tower 2 layers, LLM 1024 wide x 8 layers, MLP 2048, 4 heads) so the HF path's figures compare
directly; `--shape 7b` the real ones (CLIP-L 24 layers, Vicuna-7B: 4096 x 32, MLP 11008, vocab 32064).

Per configuration (`none` = all 576 tokens, then the method at each budget):
- throughput: `--requests` requests submitted at once to `LLM.generate` (vLLM batches them), each
  with its own image (no encoder / prefix cache reuse: caches are off and the images differ),
  `--out-tokens` generated tokens each (ignore_eos): requests/s and output tokens/s over the wall time;
- TTFT: one request alone with max_tokens=1 (image processing, tower, selection, prefill, first token).
Rounds are interleaved (every configuration once per round, after `--warmup` rounds); medians.
The FLOPs-ideal speed-ups are analytic: TTFT = (tower + LLM prefill at text + 576) / (tower +
LLM prefill at text + k); throughput = the same plus the decode steps.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import benchlib  # noqa: E402  (torch + standard library)

TOKENIZER_FROM = ROOT / "results" / "testbed" / "model"  # the testbed's tokenizer / processor files
QUESTION = "Is there a red object in the image?"  # words of the testbed vocabulary
TEXT_ONLY = "text-only"  # the same prompt without the image: vLLM's per-request floor here
SHAPES = {
    # vision layers, LLM hidden, LLM layers, heads, MLP, vocab (None: the tokenizer's)
    "scaled": (2, 1024, 8, 4, 2048, None),
    "7b": (24, 4096, 32, 32, 11008, 32064),
}


@dataclass
class Row:
    config: str
    method: str
    budget: int
    vision_tokens: int
    prompt_tokens: int
    requests: int
    out_tokens: int
    req_per_s: float
    out_tok_per_s: float
    ttft_ms: float
    throughput_speedup: float
    ttft_speedup: float
    flops_ideal_throughput: float
    flops_ideal_ttft: float
    rounds: int
    device: str
    dtype: str


def model_folder(shape: str, out: Path) -> dict:
    vision_layers, hidden, layers, heads, mlp, vocab = SHAPES[shape]
    out.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "processor_config.json", "chat_template.jinja"):
        shutil.copy(TOKENIZER_FROM / name, out / name)
    base = json.loads((TOKENIZER_FROM / "config.json").read_text())
    text = dict(base["text_config"])
    text.update(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        head_dim=hidden // heads,
        intermediate_size=mlp,
        max_position_embeddings=4096,
        vocab_size=vocab or text["vocab_size"],
    )
    vision = dict(base["vision_config"])
    vision.update(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=vision_layers)
    vision["projection_dim"] = 768
    config = {**base, "text_config": text, "vision_config": vision, "vision_feature_layer": -2}
    (out / "config.json").write_text(json.dumps(config, indent=1))
    return config


def tower_flops(vision: dict, feature_layer: int, llm_hidden: int) -> int:
    """CLIP layers up to the feature layer (577 tokens, full attention) + the 2-layer projector."""
    d, f, t = vision["hidden_size"], vision["intermediate_size"], 577
    layers = vision["num_hidden_layers"] + 1 + feature_layer  # hidden_states[-2] -> L - 1 layers
    per_layer = 2 * t * 4 * d * d + 2 * t * 2 * d * f + 2 * 2 * d * t * t
    return layers * per_layer + 2 * 576 * (d * llm_hidden + llm_hidden * llm_hidden)


def llm_flops(text: dict, prompt: int, out_tokens: int) -> tuple[int, int]:
    """(prefill over `prompt` tokens, prefill + `out_tokens` - 1 decode steps), causal attention."""
    d, h, f, n = text["hidden_size"], text["num_attention_heads"], text["intermediate_size"], text["num_hidden_layers"]
    e, vocab = text["head_dim"], text["vocab_size"]

    def layer(L: int) -> int:
        return 2 * L * 4 * d * h * e + 2 * L * 3 * d * f + 2 * 2 * h * e * (L * (L + 1) // 2)

    prefill = n * layer(prompt) + 2 * d * vocab
    decode = sum(n * (layer(prompt + t + 1) - layer(prompt + t)) + 2 * d * vocab for t in range(out_tokens - 1))
    return prefill, prefill + decode


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--shape", default=None, choices=list(SHAPES), help="default: scaled on cpu, 7b on cuda")
    ap.add_argument("--method", default="mmtok", help="the pruning method (mmtok, divprune, random, ...)")
    ap.add_argument("--budgets", nargs="+", type=int, default=[192, 64, 16], help="576 (none) is always measured")
    ap.add_argument("--requests", type=int, default=None, help="per throughput batch (default 8 cpu, 64 cuda)")
    ap.add_argument("--out-tokens", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--dtype", default=None, help="default: float32 on cpu, float16 on cuda")
    ap.add_argument("--out", default=str(ROOT / "results" / "bench"))
    args = ap.parse_args()
    shape = args.shape or ("scaled" if args.device == "cpu" else "7b")
    dtype = args.dtype or ("float32" if args.device == "cpu" else "float16")
    requests = args.requests or (8 if args.device == "cpu" else 64)
    if args.rounds < 1 or args.warmup < 0 or requests < 1 or args.out_tokens < 1:
        ap.error("--rounds, --requests and --out-tokens must be >= 1, --warmup >= 0")
    if any(b < 1 or b >= 576 for b in args.budgets):
        ap.error("--budgets must lie in 1..575 (576 = the unpruned model, always measured)")

    import torch
    from PIL import Image
    from vllm import LLM, SamplingParams

    from mmtok.serving.methods import refusal

    if refusal(args.method):
        ap.error(refusal(args.method))
    folder = Path(tempfile.mkdtemp(prefix="bench-vllm-"))
    config = model_folder(shape, folder)
    info = benchlib.machine(torch.device(args.device))
    llm = LLM(
        model=str(folder),
        load_format="dummy",
        hf_overrides={"architectures": ["MMTokLlavaForConditionalGeneration"]},
        dtype=dtype,
        enforce_eager=args.device == "cpu",
        max_model_len=2048,
        limit_mm_per_prompt={"image": 1},
        enable_prefix_caching=False,
        mm_processor_cache_gb=0,
        max_num_seqs=max(requests, 1),
        seed=0,
    )
    prompt = f"USER: <image>\n{QUESTION} ASSISTANT:"
    configs = {"none": {"mmtok_method": "none"}}
    for b in args.budgets:
        configs[f"{args.method}:{b}"] = {"mmtok_method": args.method, "mmtok_budget": b, "mmtok_question": QUESTION}
    configs[TEXT_ONLY] = {"mmtok_method": TEXT_ONLY}
    counter = iter(range(10**9))

    def image():
        rng = np.random.RandomState(next(counter))
        return Image.fromarray((rng.rand(336, 336, 3) * 255).astype("uint8"))

    def batch(kwargs: dict, n: int) -> list[dict]:
        if kwargs.get("mmtok_method") == TEXT_ONLY:  # the engine's floor: the same text, no image
            return [{"prompt": prompt.replace("<image>\n", "")} for _ in range(n)]
        return [
            {"prompt": prompt, "multi_modal_data": {"image": image()}, "mm_processor_kwargs": kwargs} for _ in range(n)
        ]

    throughput_sp = SamplingParams(temperature=0, max_tokens=args.out_tokens, ignore_eos=True, detokenize=False)
    ttft_sp = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True, detokenize=False)
    wall = {name: [] for name in configs}
    ttft = {name: [] for name in configs}
    prompt_tokens = {}
    for r in range(args.warmup + args.rounds):
        for name, kwargs in configs.items():
            reqs = batch(kwargs, requests)
            t0 = time.perf_counter()
            outs = llm.generate(reqs, throughput_sp, use_tqdm=False)
            t1 = time.perf_counter()
            assert all(len(o.outputs[0].token_ids) == args.out_tokens for o in outs)
            one = batch(kwargs, 1)
            t2 = time.perf_counter()
            (first,) = llm.generate(one, ttft_sp, use_tqdm=False)
            t3 = time.perf_counter()
            prompt_tokens[name] = len(first.prompt_token_ids)
            if r >= args.warmup:
                wall[name].append(t1 - t0)
                ttft[name].append(t3 - t2)
        print(f"round {r + 1}/{args.warmup + args.rounds} done", flush=True)

    text_tokens = prompt_tokens["none"] - 576
    vis = tower_flops(config["vision_config"], config["vision_feature_layer"], config["text_config"]["hidden_size"])
    base_prefill, base_total = llm_flops(config["text_config"], prompt_tokens["none"], args.out_tokens)
    base_wall, base_ttft = benchlib.median(wall["none"]), benchlib.median(ttft["none"])
    rows = []
    for name, kwargs in configs.items():
        text_only = name == TEXT_ONLY
        k = 0 if text_only else prompt_tokens[name] - text_tokens
        prefill, total = llm_flops(config["text_config"], prompt_tokens[name], args.out_tokens)
        tower = 0 if text_only else vis
        w, t = benchlib.median(wall[name]), benchlib.median(ttft[name])
        rows.append(
            Row(
                config=name,
                method=kwargs["mmtok_method"],
                budget=0 if text_only else kwargs.get("mmtok_budget", 576),
                vision_tokens=k,
                prompt_tokens=prompt_tokens[name],
                requests=requests,
                out_tokens=args.out_tokens,
                req_per_s=requests / w,
                out_tok_per_s=requests * args.out_tokens / w,
                ttft_ms=1000 * t,
                throughput_speedup=base_wall / w,
                ttft_speedup=base_ttft / t,
                flops_ideal_throughput=(vis + base_total) / (tower + total),
                flops_ideal_ttft=(vis + base_prefill) / (tower + prefill),
                rounds=args.rounds,
                device=args.device,
                dtype=dtype,
            )
        )
    llm.llm_engine.engine_core.shutdown()
    shutil.rmtree(folder, ignore_errors=True)

    tag = f"vllm_{args.device}" + ("" if args.method == "mmtok" else f"_{args.method}")
    out = Path(args.out)
    benchlib.write_csv(out / f"{tag}.csv", rows)
    vision_layers, hidden, layers, heads, mlp, _ = SHAPES[shape]
    command = " ".join(["python scripts/bench_vllm.py", *sys.argv[1:]])
    table = benchlib.md_table(
        [
            "config",
            "prompt tokens",
            "req/s",
            "out tok/s",
            "TTFT ms",
            "throughput speed-up",
            "FLOPs-ideal",
            "TTFT speed-up",
            "FLOPs-ideal TTFT",
        ],
        [
            [
                r.config,
                r.prompt_tokens,
                f"{r.req_per_s:.2f}",
                f"{r.out_tok_per_s:.1f}",
                f"{r.ttft_ms:.1f}",
                f"{r.throughput_speedup:.2f}",
                f"{r.flops_ideal_throughput:.2f}",
                f"{r.ttft_speedup:.2f}",
                f"{r.flops_ideal_ttft:.2f}",
            ]
            for r in rows
        ],
    )
    section = (
        f"## vLLM serving, LLaVA-1.5 shape, {args.method} ({args.device})\n\n"
        f"`{command}` (`make bench-vllm`), vLLM {__import__('vllm').__version__} + the mmtok plugin "
        f"(`MMTokLlavaForConditionalGeneration`), {dtype}, random weights: vision tower CLIP-L/336 widths "
        f"with {vision_layers} layers, LLM Llama {hidden} wide x {layers} layers (MLP {mlp}, {heads} heads). "
        f"Throughput: {requests} requests at once, {args.out_tokens} output tokens each, a distinct image per "
        "request, prefix / processor caches off; TTFT: one request alone, max_tokens=1; `text-only`: the same "
        "prompt without the image (the engine's per-request floor). Medians of "
        f"{args.rounds} interleaved rounds after {args.warmup} warm-up round(s); file `{tag}.csv`.\n\n"
        + benchlib.md_machine(info)
        + "\n"
        + table
    )
    benchlib.write_text(out / f"{tag}.md", section)
    print(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
