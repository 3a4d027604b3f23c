"""Training recipes: every hyperparameter of a way of training, as plain data.

A :class:`Recipe` holds the fields every trainer reads (model, optimizer, learning rate,
batch size, epochs, precision) and, in ``options``, those of its trainer only:
:class:`FitOptions` for Keras' ``fit`` (``trainer="fit"``), :class:`FastOptions` for the
fast loop (``trainer="fast"``, :mod:`cifarlab.training.fast`). Both are checked when built
(types, ranges, known names), so a bad recipe or override fails before anything trains.

``cifarlab train --recipe NAME`` looks a recipe up in :mod:`cifarlab.registry`; command-line
flags override single fields by name through :meth:`Recipe.with_overrides` (the one way to
change a field by name), and the resolved recipe is written to the run's ``config.json``.
"""

from __future__ import annotations

import math
import typing
from dataclasses import asdict, dataclass, field, fields, replace

from cifarlab.errors import CifarlabError

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
TRAINERS = ("fit", "fast")
OPTIMIZERS = {"fit": ("adam", "sgd"), "fast": ("sgd", "muon")}
FLIPS = ("none", "random", "alternating")
TTA_MODES = ("none", "flip", "flip_translate")  # as cifarlab.inference.tta.views takes them
MONITORS = ("val_loss", "val_accuracy", "loss", "accuracy")


class RecipeError(CifarlabError, ValueError):
    """A recipe field of the wrong type, out of range, or unknown: a one-line error on the command line."""


def _check_types(obj) -> None:
    """Every field of the dataclass ``obj`` is of its annotated type (an int is a float; a bool is no number)."""
    hints = typing.get_type_hints(type(obj))
    for f in fields(obj):
        value, hint = getattr(obj, f.name), hints[f.name]
        allowed = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, type(int | None)) else (hint,)
        allowed = tuple(typing.get_origin(a) or a for a in allowed)
        ok = any(
            value is None if a is type(None)
            else isinstance(value, bool) if a is bool
            else isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if a is float
            else isinstance(value, int) and not isinstance(value, bool) if a is int
            else isinstance(value, a)
            for a in allowed)
        if not ok:
            names = " or ".join("None" if a is type(None) else a.__name__ for a in allowed)
            raise RecipeError(f"{f.name} must be {names}, not {value!r}")


def _check(ok: bool, what: str, value) -> None:
    if not ok:
        raise RecipeError(f"{what}, not {value!r}")


@dataclass(frozen=True)
class FitOptions:
    """Options of Keras' ``fit`` (``trainer="fit"``, :mod:`cifarlab.training.train`)."""

    early_stopping_patience: int | None = None  # epochs without improvement before stopping; None: never
    monitor: str = "val_loss"  # what early stopping watches
    restore_best_weights: bool = False  # on stopping, go back to the best epoch's weights

    def __post_init__(self):
        _check_types(self)
        p = self.early_stopping_patience
        _check(p is None or p >= 1, "early_stopping_patience must be at least 1 (None: no early stopping)", p)
        _check(self.monitor in MONITORS, f"monitor must be one of {', '.join(MONITORS)}", self.monitor)


@dataclass(frozen=True)
class FastOptions:
    """Options of the fast loop (``trainer="fast"``, :mod:`cifarlab.training.fast`).

    The defaults describe "none of it": plain Nesterov SGD on unaugmented images.
    """

    momentum: float = 0.9  # SGD momentum
    nesterov: bool = True
    weight_decay: float = 0.0  # on weights, added to the gradient (goes through the momentum)
    bias_lr_scale: float = 1.0  # biases learn this much faster (and decay this much less)
    label_smoothing: float = 0.0
    lr_end_factor: float = 1.0  # the learning rate falls linearly to this fraction of itself at the last step
    translate: int = 0  # random translation by up to this many pixels (reflect padding)
    flip: str = "none"  # "none" | "random" | "alternating" (derandomised: flipped every other epoch)
    # Progressive resizing: ``((size, until), ...)``, sizes growing, ``until`` a fraction of the run's
    # steps: until then a step trains on random ``size`` x ``size`` windows of the (flipped) images
    # instead of translated whole ones; after the last pair, whole images. Fractions, so that a shorter
    # run (--epochs) still ends on whole images. () turns it off.
    crops: tuple = ()
    tta: str = "none"  # test-time augmentation: "none" | "flip" | "flip_translate" (cifarlab.inference.tta)
    # Share of the test images that get the augmented views: the least confident by the plain pass;
    # the rest keep their plain prediction. 1.0: every image. Cost: 1 + share * (views - 1) plain passes.
    tta_share: float = 1.0
    whiten_init_images: int = 0  # images used to set the whitening layer; 0: no whitening init
    whiten_bias_epochs: int = 0  # epochs during which the whitening layer's bias trains
    # Muon (optimizer="muon"): the 3x3 convolution kernels step by orthogonalised Nesterov-momentum
    # updates of size muon_lr (the schedule applies) on weights kept at a fixed norm; biases and the
    # classifier keep SGD with the fields above.
    muon_lr: float = 0.0
    muon_momentum: float = 0.6
    muon_ns_steps: int = 3  # Newton-Schulz iterations; 3 already give singular values in ~[0.5, 1.5]
    # Weight averaging: evaluation, and the model left at the end, use an exponential moving average of
    # the weights and batch-norm statistics, updated every step by min(ema_decay, (1 + t) / (10 + t)) at
    # step t (a short memory at first). 0 turns it off.
    ema_decay: float = 0.0

    def __post_init__(self):
        _check_types(self)
        for name in ("momentum", "muon_momentum", "ema_decay", "label_smoothing"):
            _check(0 <= getattr(self, name) < 1, f"{name} must be in [0, 1)", getattr(self, name))
        for name in ("weight_decay", "lr_end_factor", "muon_lr", "translate", "whiten_init_images",
                     "whiten_bias_epochs"):
            _check(getattr(self, name) >= 0, f"{name} must not be negative", getattr(self, name))
        _check(self.bias_lr_scale > 0, "bias_lr_scale must be positive", self.bias_lr_scale)
        _check(self.muon_ns_steps >= 1, "muon_ns_steps must be at least 1", self.muon_ns_steps)
        _check(self.flip in FLIPS, f"flip must be one of {', '.join(FLIPS)}", self.flip)
        _check(self.tta in TTA_MODES, f"tta must be one of {', '.join(TTA_MODES)}", self.tta)
        _check(0 < self.tta_share <= 1, "tta_share must be in (0, 1]", self.tta_share)
        sizes = [c[0] for c in self.crops if isinstance(c, tuple) and len(c) == 2]
        untils = [c[1] for c in self.crops if isinstance(c, tuple) and len(c) == 2]
        _check(len(sizes) == len(self.crops) and all(isinstance(s, int) and 8 <= s <= 32 for s in sizes)
               and all(isinstance(u, (int, float)) and 0 < u <= 1 for u in untils)
               and sizes == sorted(sizes) and untils == sorted(untils),
               "crops must be ((size, until), ...) with sizes 8-32 and untils in (0, 1], both growing", self.crops)


OPTIONS = {"fit": FitOptions, "fast": FastOptions}


@dataclass(frozen=True)
class Recipe:
    """A way of training: the fields every trainer reads, and ``options`` for its ``trainer`` alone."""

    name: str
    model: str  # default model for this recipe
    description: str = ""
    trainer: str = "fit"  # "fit": Keras' model.fit | "fast": the compiled custom loop
    optimizer: str = "adam"  # fit: "adam" | "sgd"; fast: "sgd" | "muon" (Muon for conv kernels, SGD for the rest)
    learning_rate: float = 1e-3
    batch_size: int = 32
    epochs: float = 15  # whole for trainer="fit"; the fast loop also takes a fraction (its last epoch stops part-way)
    precision: str = "fp32"  # "auto" | "bf16" | "fp16" | "fp32"
    options: FitOptions | FastOptions | None = field(default=None)  # None: the trainer's defaults

    def __post_init__(self):
        try:
            self._validate()
        except RecipeError as e:
            raise RecipeError(f"recipe {self.name!r}: {e}") from None

    def _validate(self) -> None:
        _check(self.trainer in TRAINERS, f"trainer must be one of {', '.join(TRAINERS)}", self.trainer)
        if self.options is None:
            object.__setattr__(self, "options", OPTIONS[self.trainer]())
        _check_types(self)
        _check(isinstance(self.options, OPTIONS[self.trainer]),
               f"a {self.trainer!r} recipe takes {OPTIONS[self.trainer].__name__}", type(self.options).__name__)
        _check(bool(self.name) and bool(self.model), "name and model must not be empty", (self.name, self.model))
        _check(self.optimizer in OPTIMIZERS[self.trainer],
               f"the {self.trainer!r} trainer takes optimizer {' or '.join(OPTIMIZERS[self.trainer])}", self.optimizer)
        _check(self.learning_rate > 0, "learning_rate must be positive", self.learning_rate)
        _check(self.batch_size >= 1, "batch_size must be at least 1", self.batch_size)
        _check(self.epochs > 0, "epochs must be positive", self.epochs)
        _check(self.trainer == "fast" or float(self.epochs).is_integer(), "Keras' fit trains whole epochs", self.epochs)
        _check(self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}", self.precision)
        if self.optimizer == "muon":
            _check(self.options.muon_lr > 0, "optimizer 'muon' needs a positive muon_lr", self.options.muon_lr)

    @staticmethod
    def field_names(trainer: str) -> tuple[str, ...]:
        """Every name :meth:`with_overrides` takes for a recipe of ``trainer``: core fields, then options."""
        core = tuple(f.name for f in fields(Recipe) if f.name != "options")
        return core + tuple(f.name for f in fields(OPTIONS[trainer]))

    def with_overrides(self, **overrides) -> "Recipe":
        """A copy with fields replaced by name, core fields and the trainer's options alike (``None`` values
        are ignored); checked like any recipe. An unknown name is a :class:`RecipeError`."""
        overrides = {k: v for k, v in overrides.items() if v is not None}
        option_names = {f.name for f in fields(self.options)}
        unknown = [k for k in overrides if k not in self.field_names(self.trainer)]
        if unknown:
            raise RecipeError(f"recipe {self.name!r}: no field {unknown[0]!r} for the {self.trainer!r} trainer; "
                              f"fields: {', '.join(self.field_names(self.trainer))}")
        opts = {k: v for k, v in overrides.items() if k in option_names}
        core = {k: v for k, v in overrides.items() if k not in option_names}
        try:
            options = replace(self.options, **opts) if opts else self.options
        except RecipeError as e:
            raise RecipeError(f"recipe {self.name!r}: {e}") from None
        return replace(self, options=options, **core)

    def to_dict(self) -> dict:
        """Plain JSON-able data: the core fields, and ``options`` as a dict of the trainer's options."""
        return asdict(self)
