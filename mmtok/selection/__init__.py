"""Pure tensor selection algorithms (MMTok and the pre-LLM baselines); no model wiring here.

Keeping them free of any model code lets them be tested exhaustively against plain reference
loops and benchmarked in isolation.
"""

import torch


def top_in_order(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the `k` highest `scores` (exact ties to the lower index, so results do not
    depend on the device's sort), returned in original (ascending) order."""
    return torch.sort(scores, descending=True, stable=True).indices[:k].sort().values
