"""A vLLM-ready copy of a LLaVA checkpoint saved by transformers 5.x.

transformers 5.x `save_pretrained` writes the CLIP tower's weights as `vision_tower.embeddings.*`
(`model.vision_tower.*` with the `model.` prefix); vLLM's LLaVA, like the published llava-hf
checkpoints, expects `vision_tower.vision_model.*`. `vllm_ready(src)` writes a copy with those
keys renamed (nothing else changes; transformers still loads the copy, to identical logits) into a
cache folder named after the source's content hash, and never touches `src`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

WEIGHTS = "model.safetensors"
_TOWER_PREFIXES = ("vision_tower.", "model.vision_tower.")


def rename_key(key: str) -> str:
    """`vision_tower.X` -> `vision_tower.vision_model.X` (either prefix), other keys unchanged."""
    for prefix in _TOWER_PREFIXES:
        if key.startswith(prefix) and not key.startswith(prefix + "vision_model."):
            return prefix + "vision_model." + key[len(prefix) :]
    return key


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        h.update(path.name.encode())
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def vllm_ready(src: str | os.PathLike, cache_dir: str | os.PathLike = ".cache/vllm-models") -> Path:
    """The folder of a vLLM-loadable copy of the single-file checkpoint `src` (written on first use)."""
    from safetensors.torch import load_file, save_file  # a dependency of vLLM (and of transformers)

    src = Path(src)
    if not (src / WEIGHTS).is_file() or not (src / "config.json").is_file():
        raise FileNotFoundError(f"{src} is not a single-file checkpoint (needs config.json and {WEIGHTS})")
    out = Path(cache_dir) / f"{src.name}-{_digest(src)}"
    if (out / WEIGHTS).is_file():
        return out
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for path in src.iterdir():
        if path.is_file() and path.name != WEIGHTS:
            shutil.copy2(path, tmp / path.name)
    tensors = load_file(str(src / WEIGHTS))
    renamed = {rename_key(k): v.contiguous() for k, v in tensors.items()}
    save_file(renamed, str(tmp / WEIGHTS), metadata={"format": "pt"})
    (tmp / "mmtok_vllm_ready.json").write_text(json.dumps({"source": str(src.resolve())}) + "\n")
    try:
        tmp.rename(out)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return out


__all__ = ["rename_key", "vllm_ready"]
