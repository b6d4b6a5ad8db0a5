"""In-LLM pruning: the method API (`api`), its scores (`scoring`), what a method sees (`views`), hooks (`dropper`)."""
