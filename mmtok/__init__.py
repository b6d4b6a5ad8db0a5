"""mmtok: vision-token pruning (MMTok and baselines) for HuggingFace LLaVA models."""

__version__ = "0.1.0"
