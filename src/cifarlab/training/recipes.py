"""Training recipes: every hyperparameter of a way of training, in one dataclass.

A recipe is plain data. ``cifarlab train --recipe NAME`` looks it up in
:mod:`cifarlab.registry`; command-line flags (``--epochs``, ``--batch-size``,
``--lr``) override single fields, and the resolved recipe is written to the run's
``config.json``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace


@dataclass(frozen=True)
class Recipe:
    name: str
    model: str  # default model for this recipe
    optimizer: str = "adam"  # "adam" | "sgd"
    learning_rate: float = 1e-3
    batch_size: int = 32
    epochs: int = 15
    # Early stopping: None disables it.
    early_stopping_patience: int | None = None
    monitor: str = "val_loss"
    restore_best_weights: bool = False
    precision: str = "fp32"  # "auto" | "bf16" | "fp16" | "fp32"
    description: str = ""

    def with_overrides(self, **overrides) -> "Recipe":
        """A copy with the given fields replaced; ``None`` values are ignored."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def to_dict(self) -> dict:
        return asdict(self)
