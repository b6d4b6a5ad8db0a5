"""CDPruner (arXiv 2506.10967, "Beyond Attention or Similarity"): a conditional DPP over the
visual tokens of one image, kept by greedy MAP inference.

The release's rule (`encode_images`), per image (all its crops together), T = tokens per crop:
  * similarity: cosine similarity of the *projected* tokens (what the LLM receives), normalised
    in the model's dtype and multiplied in float32;
  * relevance: CLIP image embeddings of the patches (`visual_projection(post_layernorm(x))` of
    the features the projector reads) against the CLIP text embeddings of the instruction (one per
    77-token segment); relevance = minus the cosine, averaged over segments, then min-max
    normalised over every patch of the image: (r - min + 1e-6) / (max - min);
  * kernel L = diag(r) S diag(r) (the release leaves the `theta` reweighting r <- exp(alpha r),
    alpha = theta / (2 (1 - theta)), commented out; `theta=None` is that default);
  * Chen et al.'s (NeurIPS 2018) fast greedy MAP, batched over crops: T times take the token
    with the largest remaining marginal gain d_j^2, orthogonalise its kernel row against the
    earlier picks (incremental Cholesky), and subtract the squared result from every gain.
Two guards the release lacks (it then divides by zero or by the root of a negative number and
keeps fewer than T distinct tokens): a constant relevance (max = min) becomes all ones, and once a
crop's best remaining gain is not positive (its kernel rank is used up, or rounding made it
negative) its remaining picks follow the kernel diagonal (relevance squared), highest first.
Both keep the count exactly T; neither triggers on random instances of real size (576 correlated
tokens of width 1024-4096, float32 or float16: all 576 greedy gains stay positive).
"""

from __future__ import annotations

import torch

__all__ = ["conditional_kernel", "dpp_greedy", "cdpruner_select", "relevance_scores"]


def relevance_scores(image_embeds: torch.Tensor, text_embeds: torch.Tensor, theta: float | None = None) -> torch.Tensor:
    """[c, n] relevance of every patch of one image to the instruction (the release's normalisation).

    image_embeds: [c, n, C] CLIP image embeddings of the patches; text_embeds: [M, C] one per
    text segment. Min and max run over the whole image (all crops), as the release's batch of one.
    """
    img = image_embeds / image_embeds.norm(dim=-1, keepdim=True)
    txt = text_embeds / text_embeds.norm(dim=-1, keepdim=True)
    rel = (-torch.matmul(img, txt.t())).mean(dim=-1)  # CLIP patch embeddings anti-align with text
    low, high = rel.min(), rel.max()
    rel = torch.ones_like(rel) if high <= low else (rel - low + 1e-6) / (high - low)
    if theta is not None:
        rel = torch.exp(theta / (2 * (1 - theta)) * rel)
    return rel


def conditional_kernel(features: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
    """[c, n, n] float32 kernel r_i * cos(x_i, x_j) * r_j of each crop's tokens `features` [c, n, D]."""
    unit = (features / features.norm(dim=-1, keepdim=True)).float()  # normalised in the input dtype
    similarity = torch.matmul(unit, unit.transpose(1, 2))
    return relevance.unsqueeze(2) * similarity * relevance.unsqueeze(1)


def dpp_greedy(kernel: torch.Tensor, k: int) -> torch.Tensor:
    """[c, k] ascending indices: greedy MAP of the DPP with `kernel` [c, n, n], k picks per crop."""
    c, n, _ = kernel.shape
    if not 1 <= k <= n:
        raise ValueError(f"k must satisfy 1 <= k <= {n}, got {k}")
    crops = torch.arange(c, device=kernel.device)
    basis = kernel.new_zeros(k, c, n)  # row t: the t-th pick's Cholesky column, over every token
    gain = torch.diagonal(kernel, dim1=1, dim2=2).clone()  # d_j^2: det gain of adding token j
    fallback = gain.clone()  # the diagonal, for crops whose rank is used up
    exhausted = torch.zeros(c, dtype=torch.bool, device=kernel.device)
    picks = torch.empty(k, c, dtype=torch.long, device=kernel.device)
    for t in range(k):
        j = gain.argmax(dim=-1)
        best = gain[crops, j]
        exhausted |= ~(best > 0)  # also catches NaN
        if exhausted.any():
            j = torch.where(exhausted, fallback.argmax(dim=-1), j)
        picks[t] = j
        row = kernel[crops, j] - torch.einsum("tc,tcn->cn", basis[:t, crops, j], basis[:t])
        e = row / torch.sqrt(gain[crops, j]).unsqueeze(-1)
        if exhausted.any():
            e = torch.where(exhausted.unsqueeze(-1), torch.zeros_like(e), e)
        basis[t] = e
        gain -= torch.square(e)
        gain[crops, j] = -float("inf")
        fallback[crops, j] = -float("inf")
    return torch.sort(picks.t(), dim=-1).values


def cdpruner_select(
    features: torch.Tensor,
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    k: int,
    theta: float | None = None,
) -> torch.Tensor:
    """[c, k] ascending kept indices per crop of one image.

    features: [c, n, D] projected tokens (similarity); image_embeds: [c, n, C] CLIP image
    embeddings of the same patches; text_embeds: [M, C] CLIP text embeddings of the instruction.
    """
    relevance = relevance_scores(image_embeds.float(), text_embeds.float(), theta)
    return dpp_greedy(conditional_kernel(features, relevance), k)
