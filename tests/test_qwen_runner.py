"""The runner side of Qwen2.5-VL: configs, loading, preflight, and the wrapper's prompt / image / stop rules.

The tiny Qwen2.5-VL is built in code (`ensure_tiny`, as `model=tiny_qwen25vl` builds it) and loaded
with `from_pretrained`. lmms-eval's own `qwen2_5_vl` wrappers cannot be imported here (decord,
torchvision), so the facts taken from them are read from their source files.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmtok.eval.prompts import build_prompt, preprocess_image, stop_strings
from mmtok.eval.protocol import RunProtocol
from mmtok.models.qwen2_5_vl.prompts import QWEN_SYSTEM_PROMPT, qwen_messages, qwen_smart_resize
from mmtok.run.compose import compose
from mmtok.run.identity import config_hash
from mmtok.run.preflight import preflight
from mmtok.run.schema import ConfigError
from mmtok.run.validate import validate

LMMS = Path(__import__("lmms_eval").__file__).parent
QWEN_VL_UTILS = Path(__import__("importlib.util").util.find_spec("qwen_vl_utils").origin).parent / "vision_process.py"
QUESTION = "Is there a cat in the image?\nAnswer the question using a single word or phrase."

# The chat template of Qwen/Qwen2.5-VL-{3B,7B}-Instruct (chat_template.json), as data: the tiny
# checkpoint carries a restriction of it to text and images.
QWEN25VL_INSTRUCT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def tiny_qwen_path(mmtok_cache) -> Path:
    from mmtok.models.loading import ensure_tiny

    return ensure_tiny(mmtok_cache / "tiny" / "qwen2_5_vl", "qwen2_5_vl")


@pytest.fixture(scope="module")
def tiny_qwen(tiny_qwen_path):
    """(model, processor, info) as the runner loads `model=tiny_qwen25vl` (its configured image sizing)."""
    from mmtok.models.loading import load_model

    cfg = compose(["model=tiny_qwen25vl"]).model
    return load_model(
        str(tiny_qwen_path), dtype="float32", tiny="qwen2_5_vl", min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels
    )


def _image(height, width, seed=0, mode="RGB"):
    channels = 4 if mode == "RGBA" else 3
    pixels = (np.random.RandomState(seed).rand(height, width, channels) * 255).astype("uint8")
    return Image.fromarray(pixels, mode)


def _lmms_defaults(path: Path, cls: str = "Qwen2_5_VL") -> dict:
    """The keyword defaults of `cls.__init__` in an lmms-eval model file, evaluated from its source."""
    tree = ast.parse(path.read_text())
    init = next(
        f
        for c in tree.body
        if isinstance(c, ast.ClassDef) and c.name == cls
        for f in c.body
        if isinstance(f, ast.FunctionDef) and f.name == "__init__"
    )
    args = init.args.args[-len(init.args.defaults) :]
    return {a.arg: eval(compile(ast.Expression(d), str(path), "eval"), {}) for a, d in zip(args, init.args.defaults)}


def _qwen_vl_utils_fetch_image():
    """qwen_vl_utils' own `fetch_image` (the resize lmms-eval applies), loaded without its torchvision
    import: its module imports torchvision at the top, which is not installed here."""
    import base64
    import copy
    import math
    from io import BytesIO

    tree = ast.parse(QWEN_VL_UTILS.read_text())
    keep = {"round_by_factor", "ceil_by_factor", "floor_by_factor", "smart_resize", "to_rgb", "fetch_image"}
    keep |= {"MAX_RATIO", "SPATIAL_MERGE_SIZE", "IMAGE_MIN_TOKEN_NUM", "IMAGE_MAX_TOKEN_NUM"}

    def name(n):
        return n.name if isinstance(n, ast.FunctionDef) else getattr(getattr(n, "targets", [None])[0], "id", None)

    body = [n for n in tree.body if name(n) in keep]
    typing = _AnyGeneric()  # its annotations (Optional[int], ...) are evaluated at definition time
    namespace = {"math": math, "Image": Image, "BytesIO": BytesIO, "base64": base64, "copy": copy}
    namespace.update(Optional=typing, Union=typing, Dict=typing, Tuple=typing)
    exec(compile(ast.Module(body=body, type_ignores=[]), str(QWEN_VL_UTILS), "exec"), namespace)
    return namespace["fetch_image"], namespace["smart_resize"]


class _AnyGeneric:
    def __getitem__(self, item):
        return object


# -- configs ----------------------------------------------------------------------------------------
def test_qwen_configs_follow_lmms_eval_and_the_release():
    """Hub ids, dtype, attention and the image sizing lmms-eval 0.7.3's qwen2_5_vl wrappers load the
    processor with (the MMTok release's Qwen wrapper uses the same 256*28*28 / 1605632)."""
    simple = _lmms_defaults(LMMS / "models" / "simple" / "qwen2_5_vl.py")
    assert (simple["min_pixels"], simple["max_pixels"]) == (256 * 28 * 28, 1605632)
    assert simple["system_prompt"] == QWEN_SYSTEM_PROMPT
    # the chat wrapper inherits the simple one's constructor
    assert "class Qwen2_5_VL(Qwen2_5_VLSimple)" in (LMMS / "models" / "chat" / "qwen2_5_vl.py").read_text()
    for name, hub_id in (
        ("qwen25vl_3b", "Qwen/Qwen2.5-VL-3B-Instruct"),
        ("qwen25vl_7b", "Qwen/Qwen2.5-VL-7B-Instruct"),
    ):
        cfg = compose([f"model={name}", "pruner=mmtok"])
        m = cfg.model
        assert (m.path, m.dtype, m.attn_implementation, cfg.device, m.tiny) == (
            hub_id,
            "bfloat16",
            "sdpa",
            "cuda",
            None,
        )
        assert (m.min_pixels, m.max_pixels) == (simple["min_pixels"], simple["max_pixels"])
        validate(cfg, check_model=False)
    tiny = compose(["model=tiny_qwen25vl"])
    assert (tiny.model.tiny, tiny.model.dtype, tiny.device, tiny.threads) == ("qwen2_5_vl", "float32", "cpu", 1)


def test_image_sizing_stays_out_of_the_other_families_run_identity():
    """Rows written before the sizing keys existed still resume: a LLaVA identity has no such keys."""
    from omegaconf import OmegaConf

    from mmtok.run.identity import identity
    from mmtok.run.pruner import build_pruner_from

    def ident(overrides):
        cfg = compose(overrides)
        return identity(OmegaConf.to_container(cfg, resolve=True), build_pruner_from(cfg))["model"]

    assert not {"min_pixels", "max_pixels"} & set(ident(["model=llava15_7b"]))
    assert not {"min_pixels", "max_pixels"} & set(ident(["model=tiny_llava"]))
    qwen = ident(["model=qwen25vl_7b"])
    assert (qwen["min_pixels"], qwen["max_pixels"]) == (200704, 1605632)
    assert ident(["model=qwen25vl_7b", "model.max_pixels=802816"]) != qwen


def test_a_retain_ratio_reaches_the_pruner():
    """The release's Qwen budget (k = int(ratio x image tokens)) flows from the command line to the
    pruner dataclass like any pruner parameter (with budget=null: one or the other)."""
    from mmtok.pruners import PRUNERS
    from mmtok.run.pruner import build_pruner_from

    if not any(f == "retain_ratio" for f in PRUNERS["mmtok"].__dataclass_fields__):
        pytest.skip("the pruners have no retain_ratio field yet")
    cfg = compose(["model=tiny_qwen25vl", "pruner=mmtok", "budget=null", "+pruner.params.retain_ratio=0.2"])
    validate(cfg)
    pruner = build_pruner_from(cfg)
    assert pruner.retain_ratio == 0.2 and pruner.budget is None


# -- loading ----------------------------------------------------------------------------------------
def test_tiny_qwen_loads_with_its_processor_and_sizing(tiny_qwen, tiny_qwen_path):
    from transformers import Qwen2_5_VLForConditionalGeneration

    from mmtok.models.qwen2_5_vl.processor import Qwen25VLImageProcessor, pixel_bounds, resize_factor

    model, processor, info = tiny_qwen
    assert type(model) is Qwen2_5_VLForConditionalGeneration and not model.training
    assert isinstance(processor, Qwen25VLImageProcessor) and not hasattr(processor, "video_processor")
    assert (info.family, info.source, info.local_files_only) == ("qwen2_5_vl", str(tiny_qwen_path), True)
    assert pixel_bounds(processor) == (1024, 16384) and resize_factor(processor) == 16
    # 333x500 pixels under [1024, 4096]: 21x31 multiples of 16 would be too many pixels, so
    # smart_resize scales by sqrt(333*500/4096) and floors: 48x64 pixels = 6x8 patches = 3x4 tokens
    from mmtok.models.loading import load_model

    _, small, _ = load_model(str(tiny_qwen_path), dtype="float32", min_pixels=1024, max_pixels=4096)
    text = build_prompt(small, QUESTION, "hf", "qwen2_5_vl")
    batch = small(images=[_image(333, 500)], text=[text], return_tensors="pt")
    assert batch["image_grid_thw"].tolist() == [[1, 6, 8]]
    assert int((batch["input_ids"] == model.config.image_token_id).sum()) == 12


def test_qwen_processor_round_trips_and_loads_a_hub_layout(tiny_qwen, tmp_path):
    """save_pretrained / from_pretrained keep the sizing, and a folder laid out like the hub's
    Qwen2.5-VL snapshots (preprocessor_config.json with min/max_pixels and processor_class
    Qwen2_5_VLProcessor, chat_template.json) loads without torchvision; the override wins."""
    from mmtok.models.qwen2_5_vl.processor import load_qwen_processor, pixel_bounds

    _, processor, _ = tiny_qwen
    images, text = [_image(70, 90, seed=1)], [build_prompt(processor, QUESTION, "hf", "qwen2_5_vl")]
    want = processor(images=images, text=text, return_tensors="pt")
    processor.save_pretrained(tmp_path / "saved")
    again = load_qwen_processor(str(tmp_path / "saved"))
    got = again(images=images, text=text, return_tensors="pt")
    assert pixel_bounds(again) == pixel_bounds(processor)
    assert all(torch.equal(want[k], got[k]) for k in want)

    hub = tmp_path / "hub"
    processor.tokenizer.save_pretrained(hub)
    for f in hub.glob("chat_template.*"):
        f.unlink()
    (hub / "chat_template.json").write_text(json.dumps({"chat_template": QWEN25VL_INSTRUCT_TEMPLATE}))
    ip = processor.image_processor
    (hub / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "min_pixels": 2048,
                "max_pixels": 8192,
                "patch_size": ip.patch_size,
                "temporal_patch_size": ip.temporal_patch_size,
                "merge_size": ip.merge_size,
                "image_mean": list(ip.image_mean),
                "image_std": list(ip.image_std),
                "image_processor_type": "Qwen2VLImageProcessor",
                "processor_class": "Qwen2_5_VLProcessor",
            }
        )
    )
    loaded = load_qwen_processor(str(hub))
    assert pixel_bounds(loaded) == (2048, 8192) and loaded.chat_template == QWEN25VL_INSTRUCT_TEMPLATE
    assert pixel_bounds(load_qwen_processor(str(hub), min_pixels=1024, max_pixels=16384)) == (1024, 16384)
    got = load_qwen_processor(str(hub), min_pixels=1024, max_pixels=16384)(
        images=images, text=text, return_tensors="pt"
    )
    assert torch.equal(got["pixel_values"], want["pixel_values"]) and torch.equal(got["input_ids"], want["input_ids"])


def test_sizing_for_another_family_is_refused(tiny_llava_path):
    from mmtok.models.loading import ModelSourceError, load_model

    with pytest.raises(ModelSourceError, match="min_pixels / max_pixels size Qwen2.5-VL images; a llava checkpoint"):
        load_model(str(tiny_llava_path), dtype="float32", min_pixels=1024)


# -- prompt, image, stop strings (lmms-eval's qwen2_5_vl wrappers) ---------------------------------
@pytest.mark.parametrize("template", ["tiny", "instruct"])
def test_qwen_prompt_is_the_chat_template_on_lmms_evals_messages(tiny_qwen, template):
    """Ours = `apply_chat_template` on the messages lmms-eval's qwen2_5_vl builds (system turn, then
    the image with its sizing keys, then the text) and on qwen2_5_vl_chat's (no system turn: the
    template adds the same default), for the tiny template and the Instruct checkpoints' own."""
    _, processor, _ = tiny_qwen
    if template == "instruct":
        processor = type(processor)(processor.image_processor, processor.tokenizer, QWEN25VL_INSTRUCT_TEMPLATE)
    url = "data:image/jpeg;base64,AAAA"
    simple = [
        {"role": "system", "content": "You are a helpful assistant."},
        {
            "role": "user",
            "content": [
                {"type": "image", "image": url, "max_pixels": 1605632, "min_pixels": 200704},
                {"type": "text", "text": QUESTION},
            ],
        },
    ]
    chat = [{"role": "user", "content": [{"type": "image", "image": _image(8, 8)}, {"type": "text", "text": QUESTION}]}]
    ours = build_prompt(processor, QUESTION, "hf", "qwen2_5_vl")
    for messages in (simple, chat):
        assert ours == processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert ours == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        f"<|vision_start|><|image_pad|><|vision_end|>{QUESTION}<|im_end|>\n<|im_start|>assistant\n"
    )
    # lmms-eval removes LLaVA's "<image>" placeholder from the context; a Qwen placeholder is refused
    assert build_prompt(processor, "<image>\n" + QUESTION, "hf", "qwen2_5_vl") == processor.apply_chat_template(
        qwen_messages("\n" + QUESTION), tokenize=False, add_generation_prompt=True
    )
    with pytest.raises(ValueError, match=re.escape("already contains the image placeholder '<|image_pad|>'")):
        build_prompt(processor, "<|image_pad|> " + QUESTION, "hf", "qwen2_5_vl")


def test_llava_only_options_are_refused_on_qwen(tiny_qwen):
    from mmtok.eval.wrapper import PrunedLM
    from mmtok.pruners import build_pruner

    model, processor, _ = tiny_qwen
    with pytest.raises(ValueError, match=r"^prompt_format=vicuna_v1 \(the original LLaVA conversation template\) does"):
        build_prompt(processor, QUESTION, "vicuna_v1", "qwen2_5_vl")
    with pytest.raises(ValueError, match=r"^image_preprocess=pad \(LLaVA-1.5's pad-to-square\) does not apply to qwen"):
        preprocess_image(_image(40, 60), processor, "pad", "qwen2_5_vl")
    for kwargs in ({"prompt_format": "vicuna_v1"}, {"image_preprocess": "pad"}):
        with pytest.raises(ValueError, match="does not apply to qwen2_5_vl checkpoints; valid there: ") as info:
            PrunedLM(model, processor, build_pruner("none"), RunProtocol(**kwargs))
        assert "\n" not in str(info.value)
    assert PrunedLM(model, processor, build_pruner("none")).model_type == "qwen2_5_vl"


def test_qwen_image_is_resized_as_qwen_vl_utils_fetches_it(tiny_qwen):
    """Our resize = qwen_vl_utils' own `fetch_image` (its source, run here) with the processor's bounds;
    the processor then keeps that size. Sizes below, inside and above the bounds; RGBA goes onto white."""
    fetch_image, smart_resize = _qwen_vl_utils_fetch_image()
    _, processor, _ = tiny_qwen
    ip = processor.image_processor
    lo, hi = int(ip.size.shortest_edge), int(ip.size.longest_edge)
    for i, (h, w, mode) in enumerate([(20, 30, "RGB"), (60, 90, "RGBA"), (333, 500, "RGB"), (41, 13, "L")]):
        image = _image(h, w, seed=i, mode="RGBA" if mode == "RGBA" else "RGB").convert(mode)
        ours = preprocess_image(image, processor, "crop", "qwen2_5_vl")
        ref = fetch_image({"image": image, "min_pixels": lo, "max_pixels": hi}, image_patch_size=ip.patch_size)
        assert ours.mode == "RGB" and ours.size == ref.size and np.array_equal(np.asarray(ours), np.asarray(ref))
        grid = processor.image_processor(images=[ours], return_tensors="pt")["image_grid_thw"][0].tolist()
        assert [grid[1] * ip.patch_size, grid[2] * ip.patch_size] == [ours.height, ours.width]
    for h, w in [(480, 640), (28, 28), (10, 1000), (1000, 11), (4000, 3000), (3, 5)]:
        for lo, hi in [(256 * 28 * 28, 1605632), (4 * 28 * 28, 16384 * 28 * 28)]:
            assert qwen_smart_resize(h, w, 28, lo, hi) == smart_resize(h, w, 28, lo, hi)
    with pytest.raises(ValueError, match="aspect ratios up to 200"):
        qwen_smart_resize(1, 500, 28, 1, 10**7)


def test_qwen_stop_strings_drop_the_double_newline():
    """lmms-eval's qwen2_5_vl removes "\\n\\n" from a task's `until` (it truncated Qwen's answers); LLaVA keeps it."""
    source = (LMMS / "models" / "simple" / "qwen2_5_vl.py").read_text()
    assert 'until = [item for item in until if item != "\\n\\n"]' in source
    assert stop_strings(["\n\n", "ASSISTANT:"], "qwen2_5_vl") == ["ASSISTANT:"]
    assert stop_strings("\n\n", "qwen2_5_vl") == [] and stop_strings(None, "qwen2_5_vl") == []
    assert stop_strings(["\n\n", "ASSISTANT:"], "llava") == ["\n\n", "ASSISTANT:"]


# -- preflight: a pruner the family cannot run -----------------------------------------------------
def test_a_pruner_needing_a_cls_token_is_refused_on_qwen_before_loading():
    with pytest.raises(ConfigError) as info:
        validate(compose(["model=tiny_qwen25vl", "pruner=vispruner", "budget=8"]))
    msg = str(info.value)
    assert msg.startswith("pruner 'vispruner' does not apply to Qwen2.5-VL (qwen2_5_vl): it needs a CLS token")
    assert "valid there: " in msg and "mmtok" in msg and "vispruner" not in msg.split("valid there: ")[1]
    assert "\n" not in msg
    validate(compose(["model=tiny_llava", "pruner=vispruner", "budget=8"]))  # LLaVA has one
    with pytest.raises(ConfigError, match=r"pruner 'vispruner' does not apply .* \(sweep cell pruner=vispruner\)"):
        preflight(["-m", "model=tiny_qwen25vl", "pruner=mmtok,vispruner", "budget=8", "benchmark=pope_local"])
    with pytest.raises(ConfigError, match=r"pruner 'vispruner' does not apply .* \(cell vispruner@8\)"):
        preflight(["model=tiny_qwen25vl", "benchmark=pope_local", "cells=[none,mmtok@8,vispruner@8]"])
    preflight(["model=tiny_qwen25vl", "pruner=vispruner", "benchmark=pope_local", "cells=[none,mmtok@8]"])
    # VisionZip runs there on the family's declared substitute for CLS attention
    validate(compose(["model=tiny_qwen25vl", "pruner=visionzip", "budget=8"]))


def test_the_family_is_read_from_a_local_folder_and_the_hub_cache(tiny_qwen_path, tmp_path, monkeypatch):
    local = ["model=local", f"model.path={tiny_qwen_path}", "model.dtype=float32", "device=cpu"]
    with pytest.raises(ConfigError, match="pruner 'vispruner' does not apply to Qwen2.5-VL"):
        validate(compose([*local, "pruner=vispruner"]))
    with pytest.raises(ConfigError, match="prompt_format=vicuna_v1 .* does not apply to qwen2_5_vl"):
        validate(compose([*local, "pruner=mmtok", "prompt_format=vicuna_v1"]))
    validate(compose([*local, "pruner=mmtok", "model.min_pixels=1024"]))

    other = tmp_path / "llama"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ConfigError, match=r"is a 'llama' checkpoint; supported model types: llava, llava_next, qwen2"):
        validate(compose(["model=local", f"model.path={other}"]))

    # a hub snapshot in the HF cache layout: refs/main names the snapshot holding config.json
    hub = tmp_path / "hub"
    repo = hub / "models--Qwen--Qwen2.5-VL-7B-Instruct"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    shutil.copy(tiny_qwen_path / "config.json", repo / "snapshots" / ("0" * 40) / "config.json")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(hub))
    with pytest.raises(ConfigError, match="pruner 'vispruner' does not apply to Qwen2.5-VL"):
        validate(compose(["model=qwen25vl_7b", "pruner=vispruner", "budget=64"]))
    validate(compose(["model=qwen25vl_7b", "pruner=mmtok", "budget=64"]))


def test_run_py_refuses_vispruner_on_qwen_in_one_line(run_cli, tmp_path):
    res = run_cli(["model=tiny_qwen25vl", "pruner=vispruner", "budget=8", "benchmark=pope_local"], cwd=tmp_path)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert lines[0].startswith("error: pruner 'vispruner' does not apply to Qwen2.5-VL (qwen2_5_vl)"), lines[0]
    assert not (tmp_path / "results").exists()  # nothing loaded, nothing written


def test_pruner_parameters_left_null_take_the_family_value():
    """MMTok's tau_t is null in its config: the run records (and hashes) the family's value, the
    release's 0.01 on Qwen2.5-VL and the paper's 0.02 on LLaVA; an explicit value wins."""
    from mmtok.run.pruner import build_pruner_from

    assert compose(["pruner=mmtok"]).pruner.params.tau_t is None
    assert build_pruner_from(compose(["model=tiny_qwen25vl", "pruner=mmtok"])).tau_t == 0.01
    assert build_pruner_from(compose(["model=tiny_llava", "pruner=mmtok"])).tau_t == 0.02
    assert build_pruner_from(compose(["model=tiny_qwen25vl", "pruner=mmtok", "pruner.params.tau_t=0.05"])).tau_t == 0.05
    assert build_pruner_from(compose(["model=tiny_qwen25vl", "pruner=mmtok"]), model_type="llava").tau_t == 0.02


def test_retain_ratio_on_the_command_line():
    """`pruner.retain_ratio` = `pruner.params.retain_ratio` (same pruner, same run identity); it
    replaces the token budget, so a budget beside it is a one-line error naming budget=null."""
    from omegaconf import OmegaConf

    from mmtok.run.identity import budget_label, identity
    from mmtok.run.pruner import build_pruner_from

    def built(*overrides):
        cfg = compose(["model=tiny_qwen25vl", "pruner=mmtok", *overrides])
        pruner = build_pruner_from(cfg)
        return pruner, results_hash(identity(OmegaConf.to_container(cfg, resolve=True), pruner)), budget_label(cfg)

    a, hash_a, label = built("budget=null", "pruner.retain_ratio=0.2")
    b, hash_b, _ = built("budget=null", "+pruner.params.retain_ratio=0.2")
    assert (a.retain_ratio, a.budget, hash_a, label) == (0.2, None, hash_b, "r0.2") and b == a
    assert built("budget=8")[2] == "8" and built("budget=null")[2] == "all"
    message = r"^retain_ratio=0.2 replaces the token budget: pass budget=null \(budget is 16\)$"
    with pytest.raises(ConfigError, match=message):
        built("pruner.retain_ratio=0.2")
    with pytest.raises(ConfigError, match="disagrees with pruner.params.retain_ratio=0.5"):
        built("budget=null", "pruner.retain_ratio=0.2", "+pruner.params.retain_ratio=0.5")


def results_hash(ident):

    return config_hash(ident)


def test_every_pruner_requires_only_known_traits():
    """The preflight skips importing the pruners for a family that has every trait in TRAITS; that
    is sound only while no pruner requires anything else."""
    from mmtok.models.registry import TRAITS
    from mmtok.pruners import PRUNERS

    unknown = {name: sorted(set(cls.requires) - set(TRAITS)) for name, cls in PRUNERS.items()}
    assert {name: traits for name, traits in unknown.items() if traits} == {}
    assert any(cls.requires for cls in PRUNERS.values())  # some pruner does require a trait
