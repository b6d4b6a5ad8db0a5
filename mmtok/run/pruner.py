"""The configured pruner: `pruner.name` and `pruner.params` (+ the run seed, a ratio budget and the
model family's defaults) turned into a pruner object, with one-line errors for bad parameters; and
the canonical form of a text-only (budget 0) config."""

from __future__ import annotations

from dataclasses import fields

from omegaconf import DictConfig, OmegaConf

from mmtok.pruners import PRUNERS, Composed, build_pruner
from mmtok.run.compose import compose
from mmtok.run.schema import ConfigError, PrunerConfig
from mmtok.run.validate import model_family


def build_pruner_from(cfg: DictConfig, model_type: str | None = None):
    """The configured pruner, with the parameters left at None set to the model family's defaults
    (`Pruner.for_family`: each family declares them, e.g. MMTok's tau_t), so rows and the
    resume hash record the values that run. The family is `model_type`, else read from disk without
    loading (`mmtok.run.validate.model_family`); unknown (a checkpoint not downloaded yet): left unresolved.
    Parameter errors become one-line ConfigErrors."""
    name = cfg.pruner.name
    params = dict(OmegaConf.to_container(cfg.pruner.params, resolve=True) or {})
    ratio = cfg.pruner.get("retain_ratio")
    if ratio is not None:
        if params.get("retain_ratio") not in (None, ratio):
            raise ConfigError(
                f"pruner.retain_ratio={ratio} disagrees with pruner.params.retain_ratio={params['retain_ratio']}"
            )
        params["retain_ratio"] = ratio
    if params.get("retain_ratio") is not None and cfg.budget is not None:
        raise ConfigError(
            f"retain_ratio={params['retain_ratio']} replaces the token budget: "
            f"pass budget=null (budget is {cfg.budget})"
        )
    params = _method_params(PRUNERS.get(name), params, int(cfg.seed))
    try:
        pruner = build_pruner(name, cfg.budget, **params)
    except (ValueError, TypeError) as exc:
        raise ConfigError(_line(exc)) from None
    then = cfg.pruner.get("then")
    if then is not None:
        pruner = _composed(pruner, OmegaConf.to_container(then, resolve=True), int(cfg.seed))
    if model_type is None and not OmegaConf.is_missing(cfg.model, "path"):
        model_type = model_family(cfg.model)
    return pruner.for_family(model_type) if model_type else pruner


def _method_params(cls, params: dict, seed: int) -> dict:
    """`params` as the method takes them: YAML lists as tuples (sequence-valued pruner fields are
    tuples, hashable like their defaults), and the run `seed` for a method that has one, unless the
    config sets its own (`cls` None: an unknown method, left to `build_pruner`'s error)."""
    params = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
    if cls is not None and "seed" not in params and any(f.name == "seed" for f in fields(cls)):
        params["seed"] = seed
    return params


def _line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _composed(first, then: dict, seed: int) -> Composed:
    """`first` followed by the in-LLM stage `then` ({name, budget, params}, validated by `check_then`)."""
    name = then["name"]
    cls = PRUNERS.get(name)
    if cls is None:
        valid = ", ".join(n for n, c in PRUNERS.items() if c.in_llm)
        raise ConfigError(f"unknown pruner.then.name {name!r}; valid (in-LLM pruners): {valid}")
    params = _method_params(cls, then.get("params") or {}, seed)
    try:
        stage = build_pruner(name, then.get("budget"), **params)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"pruner.then: {_line(exc)}") from None
    try:
        return Composed(first, stage)
    except ValueError as exc:
        raise ConfigError(_line(exc)) from None


def canonical(cfg: DictConfig) -> DictConfig:
    """The config a run executes and is identified by (`cfg` itself, except at budget 0).

    Budget 0 is text only: the image is never encoded, so neither the method, its parameters nor
    the image scale can act. Every pre-LLM pruner at 0 is therefore one run, executed, hashed and
    recorded as `pruner=none budget=0` (`mmtok@0`, `divprune@0` and `none@0` share its folder and
    row). The requested pruner is built first, so its own errors still surface (an in-LLM pruner
    refuses budget 0, a ratio with budget 0, unknown parameters)."""
    if cfg.budget != 0:
        return cfg
    build_pruner_from(cfg)
    out = cfg.copy()
    out.pruner = OmegaConf.merge(OmegaConf.structured(PrunerConfig), {"name": "none"})
    return out


def pruner_from_file(file: str, budget: int | None = None, *, model_type: str | None = None):
    """The pruner `configs/pruner/<file>.yaml` describes, with `budget`: a method's own file or a
    variant file (e.g. `mmtok_plus_plus`: the `mmtok` method with its parameters), as `pruner=<file>`
    would build it (the run seed 0; `model_type` resolves the family's defaults). For tables built in
    code, one line per row."""
    return build_pruner_from(compose([f"pruner={file}", f"budget={'null' if budget is None else budget}"]), model_type)
