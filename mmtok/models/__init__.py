"""Model loading and the per-family adapters (where LLaVA / LLaVA-NeXT keep image features)."""
