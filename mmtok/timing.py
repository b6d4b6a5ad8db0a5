"""Latency, FLOPs and memory measurement shared by the evaluation layer.

Timing rule: every boundary that is read on the host is preceded by a device synchronisation on
CUDA (kernels are asynchronous, so `time.perf_counter` alone would time the kernel *launches*).
On CPU the synchronisation is a no-op and `perf_counter` is exact. The pruner core uses the same
rule for its vision / selection split (`now` in `mmtok.pruners.core.engine`), so all parts of a request are
measured the same way.
"""

from __future__ import annotations

import time

import torch
from transformers import LogitsProcessor


def sync(device: torch.device | str | None) -> None:
    """Wait for queued kernels on `device` (CUDA only; CPU work is already finished)."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def now(device: torch.device | str | None = None) -> float:
    """A host timestamp taken after all work queued on `device` has finished."""
    sync(device)
    return time.perf_counter()


class FirstTokenTimer(LogitsProcessor):
    """Timestamps the end of prefill inside `generate`.

    HF `generate` calls the logits processors once per step, right after the step's forward pass
    has produced the next-token logits; the first call therefore marks "the first generated token's
    logits exist" = end of prefill. Only the first call synchronises (later steps are untouched),
    and the processor returns the scores unchanged, so greedy decoding is not affected.
    """

    def __init__(self, device: torch.device | str | None = None):
        self.device = device
        self.first: float | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.first is None:
            self.first = now(self.device)
        return scores


def prefill_flops(config, seq_len: int, *, causal: bool = False, logits_tokens: int = 1) -> int:
    """Analytic FLOPs of one LLM prefill over `seq_len` tokens (one sequence).

    `config`: a VLM config (its `text_config` is used) or a decoder text config of
    the Llama kind (Vicuna, Mistral and the like: q/k/v/o projections and a gated SwiGLU MLP).
    A matmul of an [L, a] activation with an [a, b] weight costs 2*L*a*b FLOPs (multiply + add).

    Per decoder layer, with d = hidden_size, h = heads, g = key/value heads, e = head_dim,
    f = intermediate_size, L = seq_len:

        projections  2 * L * (d*h*e + 2*d*g*e + h*e*d)      q, k, v, o
        MLP          2 * L * 3*d*f                          gate, up, down
        attention    2 * 2 * h*e * P                        QK^T and AV,
                     P = L*L (full score matrix, the convention of the FastV / SparseVLM FLOPs
                     tables) or L*(L+1)/2 with `causal=True` (only the causal triangle)

    plus the LM head for `logits_tokens` positions: 2 * logits_tokens * d * vocab (HF `generate`
    computes prefill logits for the last position only, hence 1). Embedding look-ups, norms,
    rotary embeddings and softmax are not matmuls and are left out (they are O(L*d), negligible).
    """
    text = _text_config(config)
    return text.num_hidden_layers * layer_flops(text, seq_len, causal=causal) + lm_head_flops(text, logits_tokens)


def prefill_flops_per_layer(config, seq_lens, *, causal: bool = False, logits_tokens: int = 1) -> int:
    """`prefill_flops` when the sequence length changes from layer to layer (in-LLM pruning).

    `seq_lens[l]`: the tokens decoder layer l processes (text + the vision tokens in its input);
    one entry per decoder layer. Sum of `layer_flops` over the layers plus the LM head, so a
    constant length L gives exactly `prefill_flops(config, L)`.
    """
    text = _text_config(config)
    seq_lens = list(seq_lens)
    if len(seq_lens) != text.num_hidden_layers:
        raise ValueError(f"seq_lens has {len(seq_lens)} entries; the LLM has {text.num_hidden_layers} decoder layers")
    return sum(layer_flops(text, L, causal=causal) for L in seq_lens) + lm_head_flops(text, logits_tokens)


def layer_flops(config, seq_len: int, *, causal: bool = False) -> int:
    """Analytic FLOPs of one decoder layer over `seq_len` tokens (the per-layer formula of `prefill_flops`)."""
    text = _text_config(config)
    d = text.hidden_size
    h = text.num_attention_heads
    g = getattr(text, "num_key_value_heads", None) or h
    e = getattr(text, "head_dim", None) or d // h
    f = text.intermediate_size
    L = int(seq_len)
    if L < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    pairs = L * (L + 1) // 2 if causal else L * L
    return 2 * L * (d * h * e + 2 * d * g * e + h * e * d) + 2 * L * 3 * d * f + 2 * 2 * h * e * pairs


def lm_head_flops(config, logits_tokens: int = 1) -> int:
    """FLOPs of the LM head for `logits_tokens` positions: 2 * logits_tokens * d * vocab."""
    text = _text_config(config)
    return 2 * logits_tokens * text.hidden_size * text.vocab_size


def _text_config(config):
    return getattr(config, "text_config", None) or config


def reset_peak_memory(device: torch.device | str | None) -> None:
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_bytes(device: torch.device | str | None) -> int | None:
    """Peak bytes allocated by torch on a CUDA device since `reset_peak_memory`; None on CPU.

    On CPU there is no resettable counter: `resource.getrusage().ru_maxrss` is the high-water mark
    of the whole process (model loading, earlier evaluations, the dataset), so reporting it as the
    memory of one evaluation would mislead. Use `process_peak_rss_bytes` explicitly for that.
    """
    if device is not None and torch.device(device).type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return None


def process_peak_rss_bytes() -> int:
    """Lifetime peak resident set size of this process (Linux reports ru_maxrss in KiB)."""
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def device_name(device: torch.device | str | None) -> str:
    """ "cpu" or the CUDA device's marketing name (e.g. "NVIDIA H100 80GB HBM3")."""
    if device is not None and torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu" if device is None else torch.device(device).type
