"""One tester per model family for the shared contract suite (`tests/test_pruner_contract.py`), the
transformers way: a tester declares its family (HF model_type: traits, label and tiny builder come
from the family's `FamilySpec`), the test images, how a batch is built, and what a budget keeps on
its tiny checkpoint. The contract tests run every registered method on every tester; a method whose
`requires` the family lacks is checked to refuse instead (by trait, never by name).

Adding a family = its folder under mmtok/models/ + its configs + one tester class here (appended to
`TESTERS`).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from mmtok.models.registry import family
from tests._tiny import IMAGE_SIZES, QUESTIONS, images


class FamilyTester:
    """What the contract suite needs to know about one family's tiny checkpoint."""

    model_type: ClassVar[str]
    sizes: ClassVar[list[tuple[int, int]]] = IMAGE_SIZES  # (height, width) of the three test images
    max_crops: ClassVar[int] = 1  # crops of the largest split (budget labels are per crop x this)
    tokens_per_crop: ClassVar[int | None] = None  # fixed per-crop count, or None where it follows the image
    full_tokens: ClassVar[tuple[int, ...] | None] = None  # image tokens of the three test images, when fixed
    # pre-LLM budgets the suite checks exactly: parameters -> tokens kept per image (see `expected_kept`)
    budget_cases: ClassVar[tuple[dict, ...]] = ()
    # methods the family must run (a floor for the trait split: a family that lost them is broken)
    must_run: ClassVar[frozenset[str]] = frozenset({"none", "random", "mmtok", "divprune", "fastv"})

    @property
    def spec(self):
        return family(self.model_type)

    @property
    def traits(self) -> frozenset[str]:
        return self.spec.traits

    def applies(self, cls) -> bool:
        return cls.requires <= self.traits

    def load(self, path: Path):
        """(model, processor) from a checkpoint folder, as a user loads it."""
        from mmtok.models.loading import load_model

        model, processor, _ = load_model(str(path), dtype="float32")
        return model, processor

    def prompt(self, processor, question: str) -> str:
        conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        return processor.apply_chat_template(conv, add_generation_prompt=True)

    def batch(self, processor, which=(0, 1, 2)):
        """The processor batch of test images / questions `which` (left-padded)."""
        imgs = images(self.sizes)
        return processor(
            images=[imgs[i] for i in which],
            text=[self.prompt(processor, QUESTIONS[i]) for i in which],
            return_tensors="pt",
            padding=True,
        )

    def crops(self, processor, batch, b: int) -> int:
        """Crops sample `b` of `batch` has."""
        return 1

    def expected_kept(self, params: dict, processor, batch, b: int, full: int) -> int:
        """Image tokens sample `b` keeps under `params` (`full`: its unpruned count)."""
        if "retain_ratio" in params:  # the release's k = int(ratio x n) (one crop per image)
            return int(params["retain_ratio"] * full)
        per_crop = params["budget"] // self.max_crops
        if self.tokens_per_crop is None:  # one crop whose size follows the image
            return min(per_crop, full)
        return min(per_crop, self.tokens_per_crop) * self.crops(processor, batch, b)

    def budget(self, per_crop: int) -> int:
        """The budget label that gives `per_crop` tokens to every crop of the largest split."""
        return per_crop * self.max_crops

    def keep_all_budget(self, full: int) -> int:
        """A pre-LLM budget that keeps every token of an image with `full` tokens."""
        per_crop = self.tokens_per_crop if self.tokens_per_crop is not None else full
        return per_crop * self.max_crops


class LlavaTester(FamilyTester):
    model_type = "llava"
    tokens_per_crop = 36  # tiny tower: 48 px / 8 px patches
    full_tokens = (36, 36, 36)
    budget_cases = ({"budget": 8},)


class LlavaNextTester(FamilyTester):
    model_type = "llava_next"
    max_crops = 5
    tokens_per_crop = 36
    budget_cases = ({"budget": 8 * 5},)  # 8 per crop; different sizes pick different anyres grids (5, 3 crops)

    def crops(self, processor, batch, b: int) -> int:
        from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

        ip = processor.image_processor
        side = ip.crop_size["height"] if isinstance(ip.crop_size, dict) else ip.crop_size.height
        return int(image_size_to_num_patches(batch["image_sizes"][b], ip.image_grid_pinpoints, side))


class QwenTester(FamilyTester):
    model_type = "qwen2_5_vl"
    # merged grids 4x6, 5x7 and 4x7: 24, 35 and 28 image tokens (sizes where every method prunes)
    sizes = [(60, 90), (80, 112), (64, 112)]
    full_tokens = (24, 35, 28)
    budget_cases = ({"budget": 8}, {"budget": 30}, {"retain_ratio": 0.2}, {"retain_ratio": 0.5})


TESTERS: tuple[FamilyTester, ...] = (LlavaTester(), LlavaNextTester(), QwenTester())
