"""Pure tensor selection algorithms (MMTok and the pre-LLM baselines); no model wiring here.

Keeping them free of any model code lets them be tested exhaustively against plain reference
loops and benchmarked in isolation.
"""
