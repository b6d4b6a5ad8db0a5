"""Dropping vision tokens inside the decoder, shared by FastV and SparseVLM.

A method prunes at the OUTPUT of some decoder layers ("prune layers"), scoring with attention
computed in that layer from its input. Everything else stays on the model's own fast path (SDPA):

* `attention_rows` recomputes attention probabilities for a few query rows only (the last prompt
  token, or the text raters) against all keys, from the layer's input hidden states — the model
  is never switched to eager attention or `output_attentions`.
* `LayerDropper` hooks the decoder. A forward hook on a prune layer replaces the layer's output by
  the kept rows (plus any new tokens the method inserts); forward pre-hooks on every later layer
  replace `attention_mask`, `position_ids` and `position_embeddings` so that they describe the
  shorter sequence. Each layer's own `past_key_values.update` then caches only the tokens it saw:
  layers up to the first prune layer hold the full prompt, later layers the pruned one.

Sequences between two prune layers form a "stage" (stage 0 = the prompt as built by the core).
A stage knows, per sample, which rows are real tokens (`valid`: False for left padding and for
filler), where each row came from in the original prompt (`origin`, -1 for inserted tokens),
its position ids and its vision span. Samples whose kept lengths differ are re-padded on the left
with filler rows that no query attends to, exactly like the core's left padding, so batches work.

What `create_causal_mask` gives the layers in transformers 5.23 (SDPA), and how we follow it:
  prefill, no padding  -> None (SDPA `is_causal`)   -> None while every row is valid, else built
  prefill, padding     -> bool [B, 1, L, L] = causal & key padding -> rebuilt on the kept rows
  decode,  no padding  -> None (one query sees all) -> None while every row is valid, else built
  decode,  padding     -> bool [B, 1, q, L + t]      -> key columns: kept prompt rows + the t new ones
Generation positions come from the attention mask (`cumsum - 1`) and keep counting from the full
prompt length in decode, because layer 0's cache always holds the full prompt.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from mmtok.models.adapters import FamilyAdapter, ImageSpan
from mmtok.pruners.base import Pruner


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _gather_rows(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """x [B, S, ...], rows [B, r] -> [B, r, ...]."""
    index = rows.view(*rows.shape, *([1] * (x.dim() - 2))).expand(*rows.shape, *x.shape[2:])
    return torch.gather(x, 1, index)


def _splice(values: torch.Tensor, head: torch.Tensor, new: torch.Tensor, tail: torch.Tensor) -> torch.Tensor:
    return torch.cat([values[head], new, values[tail]])


def attention_rows(
    layer: nn.Module,
    hidden: torch.Tensor,
    rows: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
    mask: torch.Tensor | None,
) -> torch.Tensor:
    """Head-averaged attention probabilities [B, r, S] of query `rows` [B, r] in decoder `layer`.

    Recomputed from the layer input `hidden` [B, S, D] as the layer itself does (input_layernorm,
    q_proj on the needed rows only, k_proj on every row, rotary with the layer's cos/sin, grouped
    key heads repeated) and masked by the layer's own mask restricted to those rows (`None` means
    plain causal over a prompt that starts at position 0). Scores and softmax are in float32.
    """
    attn = layer.self_attn
    batch, seq, _ = hidden.shape
    head_dim = attn.head_dim
    x = layer.input_layernorm(hidden)
    q = attn.q_proj(_gather_rows(x, rows)).view(batch, rows.shape[1], -1, head_dim).transpose(1, 2)
    k = attn.k_proj(x).view(batch, seq, -1, head_dim).transpose(1, 2)
    cos, sin = (t.expand(batch, -1, -1) for t in position_embeddings)
    q_cos, q_sin = _gather_rows(cos, rows).unsqueeze(1), _gather_rows(sin, rows).unsqueeze(1)
    q = q * q_cos + _rotate_half(q) * q_sin
    k = k * cos.unsqueeze(1) + _rotate_half(k) * sin.unsqueeze(1)
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)  # GQA: key heads shared by groups
    logits = (q.float() @ k.float().transpose(-1, -2)) * attn.scaling  # [B, H, r, S]
    if mask is None:
        allowed = torch.arange(seq, device=hidden.device)[None, None, :] <= rows[..., None]
        logits = logits.masked_fill(~allowed[:, None], float("-inf"))
    else:
        row_mask = _gather_rows(mask[:, 0].expand(batch, -1, -1), rows)[:, None]  # [B, 1, r, S]
        if row_mask.dtype == torch.bool:
            logits = logits.masked_fill(~row_mask, float("-inf"))
        else:  # additive float mask (eager attention)
            logits = logits + row_mask.float()
    return torch.softmax(logits, dim=-1).mean(dim=1)


def rotary_keys(layer: nn.Module, hidden: torch.Tensor, position_embeddings) -> torch.Tensor:
    """The keys [B, S, kv_heads * head_dim] decoder `layer` computes from its input `hidden`
    (input_layernorm, k_proj, rotary with the layer's cos/sin), heads concatenated per token."""
    attn = layer.self_attn
    batch, seq, _ = hidden.shape
    k = attn.k_proj(layer.input_layernorm(hidden)).view(batch, seq, -1, attn.head_dim).transpose(1, 2)
    cos, sin = (t.expand(batch, -1, -1).unsqueeze(1) for t in position_embeddings)
    k = k * cos + _rotate_half(k) * sin
    return k.transpose(1, 2).reshape(batch, seq, -1)


@dataclass
class Cut:
    """One sample's decision at a prune layer, in that layer's row coordinates.

    `keep=None` keeps every row. `extra` [m, D] are new tokens (e.g. recycled clusters) placed
    right after the kept vision tokens; they count as vision tokens from then on.
    """

    keep: torch.Tensor | None = None
    extra: torch.Tensor | None = None


def keep_vision(span: ImageSpan, rows: int, keep: torch.Tensor, extra: torch.Tensor | None = None) -> Cut:
    """The `Cut` that keeps every row outside the vision `span` of a `rows`-row stage, the vision
    tokens `keep` (ascending indices into the span) and, right after them, the new tokens `extra`."""
    device = keep.device
    end = span.start + span.length
    kept = [torch.arange(span.start, device=device), span.start + keep, torch.arange(end, rows, device=device)]
    return Cut(keep=torch.cat(kept), extra=extra)


@dataclass
class Stage:
    """The prompt rows that the layers of one stage see (see the module docstring)."""

    valid: torch.Tensor  # [B, P] bool
    origin: torch.Tensor  # [B, P] long, row in the original prompt or -1
    pos: torch.Tensor  # [B, P] long, position ids
    spans: list[ImageSpan]
    shift: torch.Tensor  # [B] decode positions: incoming position id - shift
    changed: bool  # False while it equals stage 0 (then the layers' inputs are left untouched)
    mrope: torch.Tensor | None = None  # [3, B, P] M-RoPE rows (M-RoPE families); then `pos` is unused
    # Read once when the stage is built (prefill), so decode steps never wait on the device
    all_valid: bool = False
    any_shift: bool = False

    @property
    def rows(self) -> int:
        return self.valid.shape[1]


@dataclass
class LayerView:
    """What a method sees at a prune layer during prefill."""

    index: int  # decoder layer index
    layer: nn.Module
    hidden: torch.Tensor  # the layer's input [B, P, D]
    out: torch.Tensor  # the layer's output [B, P, D]
    kwargs: dict
    stage: Stage
    embeds: torch.Tensor  # layer-0 input (the prompt embeddings) [B, L, D]
    num_layers: int
    next_layer: nn.Module | None = None  # the decoder layer that receives `out` (None after the last)
    final_norm: nn.Module | None = None  # the LLM's last RMSNorm (DART compares normalised states)

    def attention(self, rows: torch.Tensor) -> torch.Tensor:
        """Head-averaged attention [B, r, P] of `rows` [B, r], recomputed in this layer."""
        return attention_rows(
            self.layer, self.hidden, rows, self.kwargs["position_embeddings"], self.kwargs.get("attention_mask")
        )

    def next_attention(self, rows: torch.Tensor) -> torch.Tensor:
        """Head-averaged attention [B, r, P] of `rows` [B, r] in the NEXT layer, from this layer's
        output (the rows, positions and mask are the same until the cut is applied)."""
        if self.next_layer is None:
            raise ValueError(f"layer {self.index} is the last decoder layer: there is no next layer to score with")
        return attention_rows(
            self.next_layer, self.out, rows, self.kwargs["position_embeddings"], self.kwargs.get("attention_mask")
        )


@dataclass
class InLLMPruner(Pruner):
    """Base of the in-LLM methods: say where to prune (`prune_layers`) and what to keep (`cut`)."""

    in_llm: ClassVar[bool] = True
    takes_ratio: ClassVar[bool] = False  # schedules are defined by budget; a method opts in
    renumber_positions: ClassVar[bool] = False  # False: kept tokens keep their original positions

    # per prune layer of the last prefill: {"layer", "scores", "keep", ...} with per-sample lists
    last_trace: list = field(default_factory=list, init=False, repr=False, compare=False)

    def prune_layers(self, num_layers: int) -> tuple[int, ...]:
        """Increasing decoder-layer indices whose output is pruned (raise for invalid settings)."""
        raise NotImplementedError

    def cut(self, step: int, view: LayerView) -> list[Cut]:
        """Per sample, what survives the output of prune layer number `step`."""
        raise NotImplementedError

    def layer_schedule(self, n: int, config) -> list[int]:
        """Vision tokens in the input of every decoder layer, for an image span of `n` tokens in a
        model with this HF `config`, as the method's rule for `budget` prescribes. The contract
        tests count what each layer really receives and compare."""
        raise NotImplementedError

    def llm_hooks(self, model: nn.Module, adapter: FamilyAdapter) -> list:
        return LayerDropper(self, adapter).register()

    def check_budget(self, config) -> None:
        self.prune_layers(config.text_config.num_hidden_layers)  # raises for layers the LLM lacks


class LayerDropper:
    """Physically shortens the decoder's sequence at a method's prune layers (module docstring)."""

    def __init__(self, pruner: InLLMPruner, adapter: FamilyAdapter):
        self.pruner = pruner
        self.lm = adapter.language_model
        self.layers = self.lm.layers
        impl = self.lm.config._attn_implementation
        if impl not in ("sdpa", "eager"):
            raise ValueError(f"{pruner.name}: attention implementation {impl!r} is not supported (use 'sdpa')")
        n = len(self.layers)
        self.prune_at = tuple(pruner.prune_layers(n))
        ok = all(isinstance(p, int) for p in self.prune_at) and list(self.prune_at) == sorted(set(self.prune_at))
        if not self.prune_at or not ok or self.prune_at[0] < 0:
            raise ValueError(f"{pruner.name}: prune layers must be increasing layer indices, got {self.prune_at}")
        if self.prune_at[-1] >= n:
            raise ValueError(f"{pruner.name}: prune layer {self.prune_at[-1]} does not exist ({n} decoder layers)")
        # stage of layer i = number of prune layers before it
        self.stage_of = [sum(p < i for p in self.prune_at) for i in range(n)]
        self.mode: str | None = None  # "prefill", "decode", or None (pass not ours: untouched)
        self.used = None  # the Request already consumed by a prefill

    def register(self) -> list:
        handles = [self.layers[0].register_forward_pre_hook(self._begin, with_kwargs=True)]
        for i, layer in enumerate(self.layers):
            if self.stage_of[i] > 0:
                handles.append(layer.register_forward_pre_hook(self._rewrite_hook(i), with_kwargs=True))
        for step, p in enumerate(self.prune_at):
            handles.append(self.layers[p].register_forward_hook(self._prune_hook(step, p), with_kwargs=True))
        return handles

    # -- layer 0: which kind of pass is this? ---------------------------------------------------
    def _begin(self, module, args, kwargs):
        from transformers.cache_utils import DynamicCache, DynamicLayer

        hidden = args[0] if args else kwargs["hidden_states"]
        cache = kwargs.get("past_key_values")
        request = self.pruner.request
        past = cache.get_seq_length(0) if cache is not None else 0
        self.per_pass = {}
        if past == 0:  # a pass over the whole prompt
            if request is None or request is self.used:  # not an image request of ours
                self.mode = None
                return
            if cache is None or not kwargs.get("use_cache", True):
                raise ValueError(f"{self.pruner.name} prunes the KV cache and needs generate(use_cache=True)")
            if type(cache) is not DynamicCache or any(type(layer) is not DynamicLayer for layer in cache.layers):
                raise ValueError(f"{self.pruner.name} needs a plain DynamicCache (got {type(cache).__name__})")
            if hidden.shape[1] != request.prompt_length:
                raise ValueError(
                    f"{self.pruner.name}: prefill of {hidden.shape[1]} tokens, expected the whole prompt "
                    f"({request.prompt_length}); chunked prefill is not supported"
                )
            self.used, self.mode = request, "prefill"
            batch, length = hidden.shape[:2]
            pos = kwargs.get("position_ids")
            if pos is None:
                pos = torch.arange(length, device=hidden.device)
            # M-RoPE families: the layers see only cos/sin, so the 3 position rows come from the request
            mrope = None if request.position_ids is None else request.position_ids.to(hidden.device)
            if mrope is not None and self.pruner.renumber_positions:
                raise ValueError(f"{self.pruner.name} renumbers positions, which M-RoPE (3-row) positions do not allow")
            self.prompt_length = length
            self.mask_dtype = None if kwargs.get("attention_mask") is None else kwargs["attention_mask"].dtype
            self.embeds = hidden
            self.stages = [
                Stage(
                    valid=request.attention_mask.bool().to(hidden.device),
                    origin=torch.arange(length, device=hidden.device).expand(batch, -1),
                    pos=pos.expand(batch, -1),
                    spans=list(request.spans),
                    shift=torch.zeros(batch, dtype=torch.long, device=hidden.device),
                    changed=False,
                    mrope=mrope,
                )
            ]
            self.pruner.last_trace = []
        elif self.mode is not None and request is self.used:
            self.mode = "decode"
            self.decode_in = (kwargs.get("attention_mask"), kwargs.get("position_ids"), past, hidden.shape[1])
        else:
            self.mode = None

    # -- prune layers: shorten the output ------------------------------------------------------
    def _prune_hook(self, step: int, index: int):
        def hook(module, args, kwargs, out):
            if self.mode != "prefill":
                return None
            stage = self.stages[step]
            view = LayerView(
                index=index,
                layer=module,
                hidden=args[0] if args else kwargs["hidden_states"],
                out=out,
                kwargs=kwargs,
                stage=stage,
                embeds=self.embeds,
                num_layers=len(self.layers),
                next_layer=self.layers[index + 1] if index + 1 < len(self.layers) else None,
                final_norm=self.lm.norm,
            )
            with torch.no_grad():
                cuts = self.pruner.cut(step, view)
                new_stage, new_out = self._apply(stage, cuts, out)
            self.stages.append(new_stage)
            if len(self.stages) == len(self.prune_at) + 1:
                self._report()
            return new_out

        return hook

    def _apply(self, stage: Stage, cuts: list[Cut], out: torch.Tensor) -> tuple[Stage, torch.Tensor | None]:
        if all(c.keep is None and c.extra is None for c in cuts):
            # nothing dropped: leave the tensors alone so keep-all reproduces the model exactly
            return stage, None
        device, width = out.device, out.shape[-1]
        pieces = []
        for b, cut in enumerate(cuts):
            keep = torch.arange(stage.rows, device=device) if cut.keep is None else cut.keep.to(device)
            extra = out.new_zeros(0, width) if cut.extra is None else cut.extra.to(out.dtype)
            span = stage.spans[b]
            before = int((keep < span.start).sum())
            kept_vision = int(((keep >= span.start) & (keep < span.start + span.length)).sum())
            at, m = before + kept_vision, extra.shape[0]
            head, tail = keep[:at], keep[at:]
            pieces.append(
                (
                    torch.cat([out[b, head], extra, out[b, tail]]),
                    _splice(stage.valid[b], head, torch.ones(m, dtype=torch.bool, device=device), tail),
                    _splice(stage.origin[b], head, torch.full((m,), -1, device=device), tail),
                    _splice(stage.pos[b], head, torch.zeros(m, dtype=torch.long, device=device), tail),
                    None if stage.mrope is None else stage.mrope[:, b][:, torch.cat([head, tail])],
                    before,
                    kept_vision + m,
                )
            )
            if m and not self.pruner.renumber_positions:
                raise ValueError(f"{self.pruner.name}: inserted tokens need renumbered positions")
        rows = max(p[0].shape[0] for p in pieces)
        batch = len(pieces)
        # left re-padding: filler rows are invalid (never attended), like the core's padding
        new_out = out.new_zeros(batch, rows, width)
        valid = torch.zeros(batch, rows, dtype=torch.bool, device=device)
        origin = torch.full((batch, rows), -1, dtype=torch.long, device=device)
        pos = torch.zeros(batch, rows, dtype=torch.long, device=device)
        mrope = None if stage.mrope is None else stage.mrope.new_zeros(3, batch, rows)
        spans = []
        for b, (h, v, o, p, rope, start, length) in enumerate(pieces):
            offset = rows - h.shape[0]
            new_out[b, offset:], valid[b, offset:], origin[b, offset:], pos[b, offset:] = h, v, o, p
            if mrope is not None:
                mrope[:, b, offset:] = rope
            spans.append(ImageSpan(start=offset + start, length=length))
        if self.pruner.renumber_positions:
            # contiguous over the real tokens; decode tokens continue from the stage's own length
            pos = ((valid.long().cumsum(1) - 1).clamp(min=0)) * valid
            shift = self.stages[0].valid.sum(1) - valid.sum(1)
        else:
            shift = torch.zeros(batch, dtype=torch.long, device=device)
        stage = Stage(valid, origin, pos, spans, shift, changed=True, mrope=mrope)
        stage.all_valid, stage.any_shift = bool(valid.all()), bool(shift.any())
        return stage, new_out

    def _report(self) -> None:
        """Vision tokens per layer (what each layer's input holds) into the core's stats."""
        samples = self.pruner.last_stats.get("samples", [])
        for b, sample in enumerate(samples):
            per_layer = [self.stages[s].spans[b].length for s in self.stage_of]
            sample["vision_tokens"] = self.stages[-1].spans[b].length
            sample["equivalent_tokens"] = sum(per_layer) / len(per_layer)
            sample["layer_vision_tokens"] = per_layer
        self.embeds = None  # not needed any more; do not hold on to it while decoding

    # -- later layers: describe the shorter sequence -------------------------------------------
    def _rewrite_hook(self, index: int):
        def hook(module, args, kwargs):
            if self.mode is None:
                return None
            s = self.stage_of[index]
            stage = self.stages[s]
            if not stage.changed:
                return None
            if s not in self.per_pass:  # once per stage and pass, shared by the stage's layers
                hidden = args[0] if args else kwargs["hidden_states"]
                if self.mode == "prefill":
                    self.per_pass[s] = self._prefill_inputs(stage, hidden)
                else:
                    self.per_pass[s] = self._decode_inputs(stage, hidden, kwargs["position_embeddings"])
            mask, pos, emb = self.per_pass[s]
            return args, {**kwargs, "attention_mask": mask, "position_ids": pos, "position_embeddings": emb}

        return hook

    def _styled(self, allowed: torch.Tensor) -> torch.Tensor:
        """A bool mask in the form the model's own masks take (bool for SDPA, additive for eager)."""
        if self.mask_dtype is None or self.mask_dtype == torch.bool:
            return allowed
        zero = torch.zeros((), dtype=self.mask_dtype, device=allowed.device)
        return torch.where(allowed, zero, torch.finfo(self.mask_dtype).min)

    def _prefill_inputs(self, stage: Stage, hidden: torch.Tensor):
        if hidden.shape[1] != stage.rows:
            raise RuntimeError(f"{self.pruner.name}: layer input has {hidden.shape[1]} rows, stage has {stage.rows}")
        valid, pos = stage.valid.to(hidden.device), stage.pos.to(hidden.device)
        if self.mask_dtype is None and stage.all_valid:
            mask = None  # SDPA's is_causal, as the model itself does without padding
        else:
            causal = torch.ones(stage.rows, stage.rows, dtype=torch.bool, device=hidden.device).tril()
            mask = self._styled(causal[None, None] & valid[:, None, None, :])
        if stage.mrope is not None:  # the model passes no 1-D positions to its layers then
            return mask, None, self.lm.rotary_emb(hidden, stage.mrope.to(hidden.device))
        return mask, pos, self.lm.rotary_emb(hidden, pos)

    def _decode_inputs(self, stage: Stage, hidden: torch.Tensor, embeddings):
        mask_in, pos_in, past, q = self.decode_in
        batch, device = hidden.shape[0], hidden.device
        valid, shift = stage.valid.to(device), stage.shift.to(device)
        new = past + q - self.prompt_length  # generated tokens the layer's keys cover
        if mask_in is None and stage.all_valid:
            mask = None
        else:
            if mask_in is None:  # lower-right causal over the generated tokens
                i = torch.arange(q, device=device)[:, None]
                u = torch.arange(new, device=device)[None, :]
                tail = (u <= new - q + i)[None, None].expand(batch, 1, q, new)
            else:
                tail = mask_in[..., self.prompt_length :].to(device)
                tail = tail if tail.dtype == torch.bool else tail == 0
                tail = tail.expand(batch, 1, q, new)
            prompt = valid[:, None, None, :].expand(batch, 1, q, stage.rows)
            mask = self._styled(torch.cat([prompt, tail], dim=-1))
        if pos_in is None:  # M-RoPE family: positions only in the cos/sin, which no shift changes
            return mask, None, embeddings
        pos = pos_in.to(device).expand(batch, -1)
        if stage.any_shift:
            pos = pos - shift[:, None]
            embeddings = self.lm.rotary_emb(hidden, pos)
        return mask, pos, embeddings
