"""Load a checkpoint of any supported family and its processor by hub id or local folder.

    model, processor, info = load_model("<hub id or folder>", dtype="float16", device="cuda")

The family comes from `config.model_type` (`mmtok.models.registry`: each family's spec names the
unmodified transformers class that loads it). The processor is `AutoProcessor`'s unless the family
names its own loader (`FamilySpec.processor`), which alone takes the image sizing `min_pixels` /
`max_pixels` (None keeps the checkpoint's; `FamilySpec.pixel_bounds`). A hub id is loaded from the
local HF cache only, unless `download=True`; a missing folder or an uncached hub id is a one-line
`ModelSourceError` (raised before any weights are read). `tiny=<model_type>` builds the family's
tiny random checkpoint at `path` on first use (`FamilySpec.tiny`) and then loads it exactly like
any other folder.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mmtok.models.registry import FAMILIES as _SPECS
from mmtok.models.registry import pixel_bounds_families
from mmtok.models.source import ModelSourceError, check_model_source

FAMILIES = {model_type: spec.hf_class for model_type, spec in _SPECS.items()}


@dataclass
class LoadedInfo:
    source: str  # what was loaded: a folder, or a hub id
    family: str  # config.model_type
    local_files_only: bool


def ensure_tiny(path: str | Path, family: str) -> Path:
    """Build the tiny `family` checkpoint at `path` unless it is already there (safe for concurrent runs)."""
    from filelock import FileLock

    path = Path(path)
    if (path / "config.json").is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if (path / "config.json").is_file():
            return path
        tmp = Path(tempfile.mkdtemp(prefix=path.name + ".", dir=path.parent))
        try:
            _build_tiny(tmp, family)
            if path.exists():  # a half-written folder from an interrupted build
                shutil.rmtree(path)
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return path


def _build_tiny(out_dir: Path, family: str) -> None:
    if family not in _SPECS:
        raise ModelSourceError(f"unsupported model_type {family!r}; valid: {', '.join(FAMILIES)}")
    _SPECS[family].tiny_builder()(out_dir, family)


def resolve_source(path: str, *, download: bool = False, tiny: str | None = None) -> tuple[str, bool]:
    """(what to pass to from_pretrained, local_files_only) — or a one-line ModelSourceError."""
    if tiny is not None:
        return str(ensure_tiny(path, tiny)), True
    check_model_source(path, path, download=download)
    if os.path.isdir(path):
        return path, True
    return path, not download  # a cached hub id: never touch the network unless asked to


def model_class(family: str):
    import transformers

    if family not in FAMILIES:
        raise ModelSourceError(f"unsupported model_type {family!r}; valid: {', '.join(FAMILIES)}")
    return getattr(transformers, FAMILIES[family])


def torch_dtype(name: str):
    import torch

    return {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32, "auto": "auto"}[name]


def load_config(path: str, *, download: bool = False, tiny: str | None = None):
    """The checkpoint's HF config alone (no weights): enough to check a budget before loading."""
    from transformers import AutoConfig

    source, local_only = resolve_source(path, download=download, tiny=tiny)
    return AutoConfig.from_pretrained(source, local_files_only=local_only)


def load_model(
    path: str,
    *,
    dtype: str = "float16",
    attn_implementation: str = "sdpa",
    device: str = "cpu",
    download: bool = False,
    tiny: str | None = None,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
):
    """(model in eval mode on `device`, processor, LoadedInfo). `min_pixels` / `max_pixels`: the
    image sizing of a family whose processor takes it (None keeps the checkpoint's; other families take none)."""
    from transformers import AutoConfig

    source, local_only = resolve_source(path, download=download, tiny=tiny)
    config = AutoConfig.from_pretrained(source, local_files_only=local_only)
    cls = model_class(config.model_type)
    model = cls.from_pretrained(
        source,
        dtype=torch_dtype(dtype),
        attn_implementation=attn_implementation,
        local_files_only=local_only,
    )
    model = model.to(device).eval()
    processor = load_processor(
        source, config.model_type, local_files_only=local_only, min_pixels=min_pixels, max_pixels=max_pixels
    )
    return model, processor, LoadedInfo(source=source, family=config.model_type, local_files_only=local_only)


def load_processor(
    source: str,
    family: str,
    *,
    local_files_only: bool = True,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
):
    """The processor of checkpoint `source` of model_type `family`."""
    spec = _SPECS.get(family)
    loader = spec.processor_loader() if spec is not None else None
    if loader is not None:
        return loader(source, min_pixels=min_pixels, max_pixels=max_pixels, local_files_only=local_files_only)
    if (min_pixels is not None or max_pixels is not None) and not (spec is not None and spec.pixel_bounds):
        raise ModelSourceError(
            f"min_pixels / max_pixels size {pixel_bounds_families()} images; a {family} checkpoint takes neither"
        )
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(source, local_files_only=local_files_only)
