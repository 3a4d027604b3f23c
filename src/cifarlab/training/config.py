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
    autotune: bool = True  # measure kernel choices on this machine once, then cache them (training.autotune)

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "TrainConfig":
        try:
            saved = json.loads(Path(path).read_text())
            fields = saved.get("request", saved)
            return cls(**{k: v for k, v in fields.items() if k in cls.__dataclass_fields__})
        except (OSError, ValueError, TypeError) as e:
            raise CifarlabError(f"{path}: not a cifarlab config.json ({e})") from None


def resolve(cfg: TrainConfig):
    """Check a config without touching TensorFlow; return its (Recipe, ModelSpec)."""
    from cifarlab.registry import get_model, get_recipe
    from cifarlab.training.precision import CHOICES

    for name in ("epochs", "batch_size", "limit"):
        v = getattr(cfg, name)
        if v is not None and (not isinstance(v, int) or v < 1):
            raise CifarlabError(f"--{name.replace('_', '-')} must be a positive whole number, not {v!r}")
    if cfg.lr is not None and not (0 < cfg.lr < 10):
        raise CifarlabError(f"--lr must be a positive learning rate below 10, not {cfg.lr!r}")
    if not 0 < cfg.val_fraction < 1:
        raise CifarlabError(f"validation fraction must be between 0 and 1, not {cfg.val_fraction!r}")
    if cfg.precision is not None and cfg.precision not in CHOICES:
        raise CifarlabError(f"--precision must be one of {', '.join(CHOICES)}, not {cfg.precision!r}")
    recipe = get_recipe(cfg.recipe).with_overrides(  # checked again as a recipe (recipes.Recipe)
        epochs=cfg.epochs, batch_size=cfg.batch_size, learning_rate=cfg.lr, precision=cfg.precision)
    spec = get_model(cfg.model or recipe.model)
    return recipe, spec
