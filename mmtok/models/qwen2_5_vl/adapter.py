"""Qwen2.5-VL (`Qwen2_5_VLForConditionalGeneration`, transformers 5.23): its family adapter, image tokens
and pruned requests.

`QwenAdapter` is what the pruners' request path uses (`with pruner(model): model.generate(**batch)`);
the functions below are its building blocks, usable on their own; nothing here patches or
subclasses the model.

    images = encode_images(model, batch["pixel_values"], batch["image_grid_thw"])
    request = build_request(model, batch, images)            # full sequence, 3-row M-RoPE positions
    request = keep_image_tokens(request, kept)               # kept: per sample, indices into its image tokens
    new_tokens = generate(model, request, max_new_tokens=8)  # decode continues at the unpruned next position

Why this path and not `model.generate(**batch)` with a hook: in 5.23 `generate` runs the image
encoder before prefill (it pops `pixel_values`) and builds 4-row position ids (a text row + the 3
M-RoPE rows). A 4-row tensor whose text row has gaps (what slicing out pruned tokens produces) is
read as packed sequences, and without `mm_token_type_ids` `get_rope_index` is skipped and M-RoPE
silently degrades to 1-D positions. Here the 3 M-RoPE rows come from `get_rope_index` on the full
sequence, are sliced together with the embeddings, and go to `generate` as `position_ids`;
`generate` then extends every row by +1 per step from the last prompt token. Text after the image
keeps its original positions, so the last prompt position is the unpruned sequence's last one and
decoding continues exactly where the unpruned model would (the `rope_deltas` continuation).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mmtok.models.adapters import (
    CropSelection,
    FamilyAdapter,
    ImageCrops,
    ImageSpan,
    KeptImage,
    LLMInputs,
)
from mmtok.models.qwen2_5_vl.tower import LastBlockCapture, per_merged_token


@dataclass
class QwenImageTokens:
    """One image as Qwen2.5-VL's vision tower sees it, everything in raster order of the merged grid."""

    merged: torch.Tensor  # [n, D_llm] patch-merger outputs: the tokens the LLM receives
    vit: torch.Tensor  # [n, D_vis] last ViT block before the merger, mean over each 2x2 merge unit
    grid: tuple[int, int, int]  # (t, h, w) of the merged grid: n = t * h * w

    @property
    def num_tokens(self) -> int:
        return self.merged.shape[0]


@dataclass
class QwenRequest:
    """Left-padded LLM inputs for `generate(inputs_embeds=..., attention_mask=..., position_ids=...)`."""

    inputs_embeds: torch.Tensor  # [B, L, D_llm]
    attention_mask: torch.Tensor  # [B, L] 1 = real token, 0 = left padding
    position_ids: torch.Tensor  # [3, B, L] M-RoPE (t, h, w) rows; padding at 0
    image_mask: torch.Tensor  # [B, L] True at image tokens
    next_position: torch.Tensor  # [B] where decoding starts: the UNPRUNED sequence's max position + 1

    @property
    def image_token_counts(self) -> list[int]:
        return self.image_mask.sum(-1).tolist()


def window_index(model: nn.Module, image_grid_thw: torch.Tensor) -> torch.Tensor:
    """The vision tower's window order: position p of its (merge-unit) sequence holds raster unit `index[p]`."""
    from transformers.vision_utils import get_vision_window_index

    vis = model.model.visual
    index, _ = get_vision_window_index(
        image_grid_thw.cpu(),
        spatial_merge_size=vis.spatial_merge_size,
        window_size=vis.window_size,
        patch_size=vis.patch_size,
    )
    return index


def encode_images(model: nn.Module, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor) -> list[QwenImageTokens]:
    """Run the vision tower once for all images; per image, the merged tokens and the 2x2-averaged ViT features.

    The authors' release (MMTok on Qwen) takes the last block's hidden states, which the tower
    keeps in window order, averages each consecutive group of `merge**2` rows (one merge unit:
    the processor emits patches unit by unit) and applies the same window-to-raster permutation as
    the merger output. 5.23 returns those hidden states as `last_hidden_state`.
    """
    vis = model.model.visual
    unit = vis.spatial_merge_size**2
    out = model.model.get_image_features(pixel_values.to(vis.dtype), image_grid_thw, return_dict=True)
    hidden = out.last_hidden_state  # [patches, D_vis], window order
    vit = hidden.reshape(hidden.shape[0] // unit, unit, -1).mean(dim=1)
    reverse = torch.argsort(window_index(model, image_grid_thw)).to(vit.device)
    vit = vit[reverse]
    sizes = (image_grid_thw.prod(-1) // unit).tolist()
    merge = vis.spatial_merge_size
    grids = [(int(t), int(h) // merge, int(w) // merge) for t, h, w in image_grid_thw.tolist()]
    return [
        QwenImageTokens(merged=m, vit=v, grid=g)
        for m, v, g in zip(out.pooler_output, torch.split(vit, sizes), grids, strict=True)
    ]


def build_request(model: nn.Module, batch, images: list[QwenImageTokens] | None = None) -> QwenRequest:
    """The full (unpruned) request for a processor batch: embeddings with the image tokens in, 3-row positions.

    `batch` is the processor output (input_ids, attention_mask, mm_token_type_ids, pixel_values,
    image_grid_thw). Pass `images` to reuse an `encode_images` result (or substitute features).
    """
    inner = model.model
    input_ids = batch["input_ids"]
    attention_mask = batch["attention_mask"]
    if batch.get("mm_token_type_ids") is None:
        raise ValueError(
            "Qwen2.5-VL inputs need `mm_token_type_ids` (the processor returns them); without them "
            "get_rope_index is skipped and M-RoPE positions are lost"
        )
    if images is None:
        images = encode_images(model, batch["pixel_values"], batch["image_grid_thw"])
    embeds = inner.get_input_embeddings()(input_ids)
    image_mask = input_ids == model.config.image_token_id
    feats = torch.cat([im.merged for im in images], dim=0).to(embeds.device, embeds.dtype)
    if int(image_mask.sum()) != feats.shape[0]:
        raise ValueError(f"{int(image_mask.sum())} image placeholders but {feats.shape[0]} image tokens")
    embeds = embeds.masked_scatter(image_mask.unsqueeze(-1), feats)
    position_ids, deltas = inner.get_rope_index(
        input_ids,
        mm_token_type_ids=batch["mm_token_type_ids"],
        image_grid_thw=batch["image_grid_thw"],
        attention_mask=attention_mask,
    )
    lengths = attention_mask.sum(-1)
    return QwenRequest(
        inputs_embeds=embeds,
        attention_mask=attention_mask,
        position_ids=position_ids,
        image_mask=image_mask & attention_mask.bool(),
        next_position=(lengths + deltas.view(-1).to(lengths.device)).long(),
    )


def keep_image_tokens(request: QwenRequest, kept: list[torch.Tensor]) -> QwenRequest:
    """Drop image tokens: sample b keeps text and image tokens `kept[b]` (indices into its image tokens, in
    sequence order over all its images), each with its ORIGINAL 3-row position; then left-pad again."""
    batch = request.inputs_embeds.shape[0]
    if len(kept) != batch:
        raise ValueError(f"kept indices for {len(kept)} samples, batch has {batch}")
    rows = []
    for b in range(batch):
        real = request.attention_mask[b].bool()
        is_image = request.image_mask[b]
        n_image = int(is_image.sum())
        idx = torch.as_tensor(kept[b], dtype=torch.long, device=is_image.device)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n_image):
            raise ValueError(f"sample {b}: kept indices must lie in [0, {n_image}), got {idx.tolist()}")
        if idx.unique().numel() != idx.numel():
            raise ValueError(f"sample {b}: kept indices repeat")
        keep_image = torch.zeros(n_image, dtype=torch.bool, device=is_image.device)
        keep_image[idx] = True
        keep = real & ~is_image
        keep[is_image.nonzero().view(-1)[keep_image]] = True
        rows.append(keep.nonzero().view(-1))  # ascending: sequence order, whatever order `kept` has
    width = max(r.numel() for r in rows)
    dim = request.inputs_embeds.shape[-1]
    embeds = request.inputs_embeds.new_zeros(batch, width, dim)
    mask = request.attention_mask.new_zeros(batch, width)
    pos = request.position_ids.new_zeros(3, batch, width)
    image_mask = torch.zeros(batch, width, dtype=torch.bool, device=request.image_mask.device)
    for b, r in enumerate(rows):
        start = width - r.numel()  # left padding, as the processor pads
        embeds[b, start:] = request.inputs_embeds[b, r]
        mask[b, start:] = 1
        pos[:, b, start:] = request.position_ids[:, b, r]
        image_mask[b, start:] = request.image_mask[b, r]
    return QwenRequest(embeds, mask, pos, image_mask, request.next_position.clone())


def generate(model: nn.Module, request: QwenRequest, **generate_kwargs) -> torch.Tensor:
    """Greedy (or any) decoding from a request; returns only the new tokens [B, T]."""
    # `generate` continues every position row with last + 1; the last prompt token is text with its
    # original position, so this equals the unpruned `next_position` - checked, not assumed.
    last = request.position_ids[:, :, -1]
    if not bool((last == (request.next_position - 1).to(last.device)).all()):
        raise ValueError("the request does not end with a text token at its original position")
    model.model.rope_deltas = None  # stale deltas of an earlier native call are never read on this path
    return model.generate(
        inputs_embeds=request.inputs_embeds,
        attention_mask=request.attention_mask,
        position_ids=request.position_ids,
        **generate_kwargs,
    )


def retain_count(num_tokens: int, retain_ratio: float) -> int:
    """The release's Qwen budget: k = int(ratio x image tokens) (Qwen's token count follows the image size).

    int() truncates, so a small image at a small ratio can get k = 0; the release then drops every
    image token of the request, and `keep_image_tokens` with an empty index list does the same.
    """
    if not 0.0 < retain_ratio <= 1.0:
        raise ValueError(f"retain_ratio must be in (0, 1], got {retain_ratio}")
    return int(retain_ratio * num_tokens)


def release_question_embeddings(embed_tokens: nn.Module, tokenizer, question: str) -> torch.Tensor:
    """MMTok's text side on Qwen as the release prepares it: input-embedding rows of "Question: <question>".

    Unlike its LLaVA path there is no cleaning: no stop words or benchmark post-prompts removed,
    punctuation kept. The text is split on whitespace and tokenized as pre-split words (with a
    byte-level tokenizer each word is encoded on its own, without the leading-space marker); a
    leading BOS would be dropped (Qwen's tokenizer adds none). One row per sub-word.
    """
    words = f"Question: {question}".split()
    ids = tokenizer(words, is_split_into_words=True)["input_ids"]
    if len(ids) > 1 and tokenizer.bos_token_id is not None and ids[0] == tokenizer.bos_token_id:
        ids = ids[1:]
    table = embed_tokens.weight
    return table[torch.tensor(ids, device=table.device)]


class QwenAdapter(FamilyAdapter):
    """Qwen2.5-VL: one image = one "crop" of t*h*w merged tokens (the count follows the image size).

    Kept tokens keep their original M-RoPE positions (`keep_image_tokens`); the request goes to
    `generate` as embeddings + the 3 position rows, so decoding continues at the unpruned
    sequence's next position. Methods see `proj` = the merger outputs and `pre` = the ViT's last
    block averaged per 2x2 merge unit (raster order, no CLS). No CLS row: `encode_with_attention`
    offers the VisionZip authors' substitute (`tower.py`), and merged tokens are placed in the rows
    their selection names (`CropSelection.features` with `indices`).
    """

    family = "qwen2_5_vl"
    image_keys = ("image_grid_thw", "mm_token_type_ids")
    # the MMTok authors' DivPrune variant on Qwen2.5-VL selects on the ViT's last block averaged per
    # 2x2 merge unit (`ImageCrops.patches`, as MMTok's vision-vision term), not on the merged tokens
    diversity_features = "patches"

    def question_embeddings(self, embed_tokens: nn.Module, tokenizer, question: str) -> torch.Tensor:
        """MMTok's text side on Qwen2.5-VL, as its release prepares it (`release_question_embeddings`)."""
        return release_question_embeddings(embed_tokens, tokenizer, question)

    def encode(self, pixel_values: torch.Tensor, image_grid_thw=None, mm_token_type_ids=None) -> list[ImageCrops]:
        if image_grid_thw is None:
            raise ValueError("Qwen2.5-VL inputs need `image_grid_thw` (the processor returns them)")
        return [
            ImageCrops(proj=im.merged[None], pre=im.vit[None], grid=im.grid[1:], has_cls=False)
            for im in encode_images(self.model, pixel_values, image_grid_thw)
        ]

    def encode_with_attention(self, pixel_values: torch.Tensor, image_grid_thw=None, mm_token_type_ids=None):
        """`encode` plus, per image, the VisionZip authors' substitute for CLS attention
        (`tower.received_attention`: the attention each merged token receives in the last ViT block)
        and that block's keys averaged per merge unit and over heads, from the same tower pass."""
        if image_grid_thw is None:
            raise ValueError("Qwen2.5-VL inputs need `image_grid_thw` (the processor returns them)")
        with LastBlockCapture(self.model) as grab:
            images = self.encode(pixel_values, image_grid_thw=image_grid_thw)
        received, keys = grab.signals()
        vis = self.model.model.visual
        unit = vis.spatial_merge_size**2
        reverse = torch.argsort(window_index(self.model, image_grid_thw))
        scores = per_merged_token(received, unit, reverse)
        keys = per_merged_token(keys, unit, reverse).mean(dim=1)
        sizes = [image.tokens_per_crop for image in images]
        for image, a, k in zip(images, torch.split(scores, sizes), torch.split(keys, sizes), strict=True):
            image.attention, image.keys = a[None], k[None]
        return images

    def assemble(self, image: ImageCrops, sel: CropSelection, layout: str) -> torch.Tensor:
        return self.kept(image, sel, layout).tokens

    def kept(self, image: ImageCrops, sel: CropSelection, layout: str) -> KeptImage:
        if sel.features is not None:
            # merged tokens stand in the rows `indices` give them (VisionZip's contextual tokens at
            # their targets' places), with those rows' original M-RoPE positions
            if sel.indices is None:
                raise ValueError(
                    "Qwen2.5-VL keeps original M-RoPE positions: merged tokens need the rows they stand in (indices)"
                )
            index, tokens = sel.indices[0].to(image.proj.device), sel.features[0]
            if tokens.shape[0] != index.numel():
                raise ValueError(f"{tokens.shape[0]} merged tokens for {index.numel()} rows")
            order = index.argsort()
            return KeptImage(tokens=tokens.to(image.proj.device)[order], index=index[order])
        index = sel.packed_indices if sel.packed_indices is not None else sel.indices[0]
        index = index.to(image.proj.device).sort().values
        return KeptImage(tokens=image.proj[0][index], index=index)

    def build_inputs(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, kept: list[KeptImage], image_inputs: dict
    ) -> LLMInputs:
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, **image_inputs}
        if batch.get("mm_token_type_ids") is None:
            raise ValueError(
                "Qwen2.5-VL inputs need `mm_token_type_ids` (the processor returns them); without them "
                "get_rope_index is skipped and M-RoPE positions are lost"
            )
        inner = self.model.model
        embeds = inner.get_input_embeddings()(input_ids)
        image_mask = input_ids == self.config.image_token_id
        for b, k in enumerate(kept):
            if k.index is None:
                raise ValueError("Qwen2.5-VL needs the kept tokens' indices (their original positions)")
            rows = image_mask[b].nonzero().view(-1)
            embeds[b, rows[k.index.to(rows.device)]] = k.tokens.to(embeds.dtype)
        position_ids, deltas = inner.get_rope_index(
            input_ids,
            mm_token_type_ids=batch["mm_token_type_ids"],
            image_grid_thw=batch["image_grid_thw"],
            attention_mask=attention_mask,
        )
        full = QwenRequest(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            image_mask=image_mask & attention_mask.bool(),
            next_position=(attention_mask.sum(-1) + deltas.view(-1).to(attention_mask.device)).long(),
        )
        pruned = keep_image_tokens(full, [k.index for k in kept])
        spans = []
        for b in range(len(kept)):
            where = pruned.image_mask[b].nonzero().view(-1)
            # an image pruned to nothing: an empty span right after its <|vision_start|>, which is kept
            start = int(where[0]) if where.numel() else _vision_start_row(full, pruned, input_ids, b, self.config) + 1
            spans.append(ImageSpan(start=start, length=int(where.numel())))
        last = pruned.position_ids[:, :, -1]
        if not bool((last == (pruned.next_position - 1).to(last.device)).all()):
            raise ValueError("the request does not end with a text token at its original position")
        return LLMInputs(pruned.inputs_embeds, pruned.attention_mask, spans, position_ids=pruned.position_ids)

    def generate_inputs(self, inputs: LLMInputs) -> dict:
        self.model.model.rope_deltas = None  # stale deltas of an earlier native call are never read on this path
        return super().generate_inputs(inputs)


def _vision_start_row(full: QwenRequest, pruned: QwenRequest, input_ids: torch.Tensor, b: int, config) -> int:
    """Row of sample b's <|vision_start|> in the pruned (re-padded) request."""
    row = int((input_ids[b] == config.vision_start_token_id).nonzero().view(-1)[0])
    before = int((full.attention_mask[b, : row + 1].bool() & ~full.image_mask[b, : row + 1]).sum())
    pad = pruned.attention_mask.shape[1] - int(pruned.attention_mask[b].sum())
    return pad + before - 1
