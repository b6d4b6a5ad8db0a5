"""OCRBench's aggregation for the local task: lmms-eval 0.7.3's own, made safe to call more than once
per process.

lmms-eval's `ocrbench_aggregate_accuracy` adds each row's score into the module-level dict
`OCRBench_score` and never resets it. Its built-in task imports that module afresh from the task
folder every time the task is loaded (`!function utils...`), so each evaluation starts from zero;
our template names it by its module path, which Python imports once, so a second evaluation in the
same process (the next cell of a job) would add its rows to the first one's. Zeroing the totals
before each call restores the built-in behaviour. Its report file (`ocrbench_results.txt`, which
lmms-eval writes under `./results/` when no output path is given) goes to a temporary folder
that is removed after the call: the score is what it returns.
"""

from __future__ import annotations

import tempfile
from types import SimpleNamespace

from lmms_eval.tasks.ocrbench import utils as ocrbench_utils


def ocrbench_aggregate_accuracy(results, args=None):
    for key in ocrbench_utils.OCRBench_score:
        ocrbench_utils.OCRBench_score[key] = 0
    with tempfile.TemporaryDirectory(prefix="mmtok-ocrbench-") as folder:
        return ocrbench_utils.ocrbench_aggregate_accuracy(results, SimpleNamespace(output_path=folder))
