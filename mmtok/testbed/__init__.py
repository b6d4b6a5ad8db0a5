"""The trained testbed model: a small real `LlavaForConditionalGeneration` trained on CPU on the
synthetic scenes of `mmtok.data` (`train`, `make testbed` -> results/testbed/model), and the table of
every pruner x budget measured on it (`table`, `make testbed-table` -> results/testbed/table.*), with
the ground-truth oracle as its reference row (`oracle`) and the scoring both share (`scores`)."""
