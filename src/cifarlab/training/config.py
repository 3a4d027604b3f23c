"""What a user asks of a training run, checked before anything heavy is imported."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from cifarlab.errors import CifarlabError


@dataclass
class TrainConfig:
    """What a user asks of ``cifarlab train``; ``None`` means "the recipe's value"."""

    model: str | None = None  # None: the recipe's model
    recipe: str = "fast"
    data: str | None = None
    dataset: str = "cifar10"
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    precision: str | None = None
    seed: int = 0
    deterministic: bool = False  # TensorFlow op determinism: identical results on one machine
    limit: int | None = None
    validate_on: str = "holdout"
    val_fraction: float = 0.1
    coarse: bool = False
    out: str | None = None
    quiet: bool = False
    report: bool = True  # write report.html at the end (cifarlab.evaluation.report)
    tensorboard: bool = False  # write TensorBoard logs into RUN_DIR/tensorboard
    strategy: str = "auto"  # distribution: auto | mirrored | multiworker (training.distribute)
    devices: int | None = None  # local devices (GPUs, or logical CPUs) per worker
    checkpoint_every: int | None = None  # steps between mid-epoch checkpoints; None: the default, 0: epochs only
    exclude: str | None = None  # FINDINGS[:KINDS] of cifarlab audit: train without those images (data.findings)
    relabel: bool = False  # with exclude: give "label" findings their suggested label instead
    autotune: bool = True  # measure kernel choices on this machine once, then cache them (training.autotune)
    overrides: dict | None = None  # recipe field -> value (--set key=value; training.overrides)

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "TrainConfig":
        """A run's ``config.json`` (its ``request``) or a plain object of these fields, in JSON or (by a
        ``.yaml``/``.yml`` suffix) YAML, as ``cifarlab tune`` writes its best; unknown keys are ignored."""
        try:
            text = Path(path).read_text()
            if Path(path).suffix.lower() in (".yaml", ".yml"):
                import yaml

                try:
                    saved = yaml.safe_load(text)
                except yaml.YAMLError as e:
                    raise ValueError(str(e).replace("\n", " ")) from None
            else:
                saved = json.loads(text)
        except (OSError, ValueError, TypeError) as e:
            raise CifarlabError(f"{path}: not a cifarlab config.json ({e})") from None
        fields = saved.get("request", saved) if isinstance(saved, dict) else saved
        if not isinstance(fields, dict):
            raise CifarlabError(f"{path}: not a JSON object of training settings")
        known = {k: v for k, v in fields.items() if k in cls.__dataclass_fields__}
        for name, value in known.items():
            problem = _type_problem(value, _field_types()[name])
            if problem:
                raise CifarlabError(f"{path}: {name} must be {problem}, not {value!r}")
        return cls(**known)


def _field_types() -> dict:
    import typing

    return typing.get_type_hints(TrainConfig)


def _type_problem(value, hint) -> str | None:
    """What ``value`` should be to fit the type annotation ``hint`` (words), or None when it fits.

    JSON has no ints apart from numbers: ``true`` is no whole number, ``3.0`` no whole number
    either, and an int is a fine float.
    """
    import types
    import typing

    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        if value is None:
            return None
        rest = [a for a in args if a is not type(None)]
        inner = _type_problem(value, rest[0] if len(rest) == 1 else typing.Union[tuple(rest)])
        return inner and f"{inner} or null"
    origin = typing.get_origin(hint) or hint
    if origin is bool:
        return None if isinstance(value, bool) else "true or false"
    if origin is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "a whole number"
    if origin is float:
        return None if isinstance(value, (int, float)) and not isinstance(value, bool) else "a number"
    if origin is str:
        return None if isinstance(value, str) else "a string"
    if origin in (list, tuple):
        ok = isinstance(value, list) and all(_type_problem(v, args[0]) is None for v in value) if args else True
        return None if ok and isinstance(value, list) else "a list" + (" of such items" if args else "")
    return None  # a type this check does not know: left to the code that uses it


def resolve(cfg: TrainConfig):
    """Check a config without touching TensorFlow; return its (Recipe, ModelSpec)."""
    from cifarlab.data import local_source
    from cifarlab.registry import get_model, get_recipe
    from cifarlab.training.overrides import override_recipe
    from cifarlab.training.precision import CHOICES

    for name in ("epochs", "batch_size", "limit"):
        v = getattr(cfg, name)
        if v is not None and (not isinstance(v, int) or v < 1):
            raise CifarlabError(f"--{name.replace('_', '-')} must be a positive whole number, not {v!r}")
    if cfg.lr is not None and not (0 < cfg.lr < 10):
        raise CifarlabError(f"--lr must be a positive learning rate below 10, not {cfg.lr!r}")
    if not 0 < cfg.val_fraction < 1:
        raise CifarlabError(f"validation fraction must be between 0 and 1, not {cfg.val_fraction!r}")
    if cfg.relabel and not cfg.exclude:
        raise CifarlabError("--relabel needs --exclude FINDINGS (the findings whose labels to change)")
    local_source(cfg.data)
    if cfg.exclude:
        from cifarlab.data.findings import read_findings

        read_findings(cfg.exclude, cfg.relabel)  # a bad findings file fails before TensorFlow starts
    if cfg.precision is not None and cfg.precision not in CHOICES:
        raise CifarlabError(f"--precision must be one of {', '.join(CHOICES)}, not {cfg.precision!r}")
    if cfg.overrides is not None and not isinstance(cfg.overrides, dict):
        raise CifarlabError(f"overrides must map recipe fields to values, not {cfg.overrides!r}")
    recipe = override_recipe(get_recipe(cfg.recipe), cfg.overrides).with_overrides(  # checked again as a recipe
        epochs=cfg.epochs, batch_size=cfg.batch_size, learning_rate=cfg.lr, precision=cfg.precision)
    spec = get_model(cfg.model or recipe.model)
    return recipe, spec
