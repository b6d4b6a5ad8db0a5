"""Evaluation: a loaded model + a pruner run through the real lmms-eval 0.7.3.

`evaluate` (`mmtok.eval.evaluate`) drives `simple_evaluate` with our lmms-eval model class
(`wrapper`), which builds each request's prompt and image by the model family's rules (`prompts`),
applies the pruner around `generate`, and records one sample per answered request; `metrics`
flattens lmms-eval's results into the paper's metrics. Nothing here is imported by this package's
`__init__`, so importing a torch-free module of it (e.g. the protocol options) stays cheap.
"""
