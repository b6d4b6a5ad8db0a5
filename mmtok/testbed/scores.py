"""Scoring the testbed model on its scene benchmarks, shared by the table (`mmtok.testbed.table`) and
the closing step of training (`mmtok.testbed.train`): the benchmark folders, one table cell, and the
row of scores an evaluation gives (POPE F1 per split; GQA exact match, also per question kind)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mmtok.data import build_dataset
from mmtok.data.scene_tasks import question_kind

TASKS = ("scenes_pope", "scenes_gqa")
POPE_COLUMNS = ("pope_random_f1", "pope_popular_f1", "pope_adversarial_f1", "pope_f1_avg", "pope_acc_avg")
GQA_KINDS = ("choose", "size", "bigcolor")
KIND_COLUMNS = tuple(f"acc_{k}" for k in GQA_KINDS)


@dataclass(frozen=True)
class Cell:
    task: str
    pruner: str  # a Row's label, or "none"
    budget: int | None  # None: unpruned

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.task, self.pruner, "" if self.budget is None else str(self.budget))


def testbed(task: str, n: int, cache: Path):
    folder = cache / "testbed" / f"{task}-n{n}"
    return build_dataset(folder, task, n=n, seed=0)  # the same scenes as `python run.py benchmark=<task>`


def score_row(cell: Cell, out) -> dict:
    m = out.metrics
    row = {"task": cell.task, "pruner": cell.pruner, "budget": cell.key[2], "n": len(out.samples)}
    if cell.task == "scenes_pope":
        row["score"] = m["pope_f1_avg"]
        row.update({c: m[c] for c in POPE_COLUMNS})
    else:
        row["score"] = m["gqa_exact_match"]
        for kind in GQA_KINDS:
            got = [s for s in out.samples if question_kind(s.question) == kind]
            row[f"acc_{kind}"] = sum(s.answer.lower() == s.target.lower() for s in got) / max(1, len(got))
    row["vision_tokens_mean"] = sum(s.vision_tokens for s in out.samples) / len(out.samples)
    return row
