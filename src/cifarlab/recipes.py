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
    optimizer: str = "adam"  # "adam" | "sgd" | "muon" (fast loop only: Muon for conv kernels, SGD for the rest)
    learning_rate: float = 1e-3
    batch_size: int = 32
    epochs: float = 15  # whole for trainer="fit"; the fast loop also takes a fraction (its last epoch stops part-way)
    # Early stopping: None disables it.
    early_stopping_patience: int | None = None
    monitor: str = "val_loss"
    restore_best_weights: bool = False
    precision: str = "fp32"  # "auto" | "bf16" | "fp16" | "fp32"
    description: str = ""
    # --- Fields below are used by the fast loop (trainer="fast", cifarlab.training.fast).
    # Their defaults describe "none of it", so recipes that train with Keras' fit are unchanged.
    trainer: str = "fit"  # "fit": Keras' model.fit | "fast": the compiled custom loop
    momentum: float = 0.9  # SGD momentum (fast loop)
    nesterov: bool = True
    weight_decay: float = 0.0  # L2 on weights, added to the gradient (goes through the momentum)
    bias_lr_scale: float = 1.0  # biases learn this much faster (and decay this much less)
    label_smoothing: float = 0.0
    warmup_fraction: float = 0.0  # share of steps for the linear warm-up of the learning rate
    lr_start_factor: float = 1.0  # learning rate at step 0, as a fraction of learning_rate
    lr_end_factor: float = 1.0  # learning rate at the last step, as a fraction of learning_rate
    translate: int = 0  # random translation by up to this many pixels (reflect padding)
    flip: str = "none"  # "none" | "random" | "alternating" (derandomised: flipped every other epoch)
    # Progressive resizing (fast loop): ``((size, until), ...)``, sizes growing, ``until`` a fraction of
    # the run's steps: until then a step trains on random ``size`` x ``size`` windows of the (flipped)
    # images instead of translated whole ones; after the last pair, whole images. The net is fully
    # convolutional with a global pool, so it takes every size, and a smaller image costs fewer FLOPs.
    # Fractions, so that a shorter run (--epochs) still ends on whole images. () turns it off.
    crops: tuple = ()
    tta: str = "none"  # test-time augmentation: "none" | "flip" | "flip_translate"
    # Share of the test images that get the augmented views: the least confident by the plain pass
    # (narrowest margin between the two most probable classes); the rest keep their plain prediction,
    # which the views would rarely change. 1.0: every image. Cost: 1 + share * (views - 1) plain passes.
    tta_share: float = 1.0
    whiten_init_images: int = 0  # images used to set the whitening layer; 0: no whitening init
    whiten_bias_epochs: int = 0  # epochs during which the whitening layer's bias trains
    jit_compile: bool = False  # XLA-compile the training and evaluation steps
    # Muon (optimizer="muon", after airbench's later record): the 3x3 convolution kernels step by
    # orthogonalised Nesterov-momentum updates of size muon_lr (the schedule applies) on weights
    # kept at a fixed norm; biases and the classifier keep SGD with the fields above.
    muon_lr: float = 0.0
    muon_momentum: float = 0.6
    muon_ns_steps: int = 3  # Newton-Schulz iterations; 3 already gives singular values in ~[0.5, 1.5]
    # Lookahead (airbench): every ``lookahead_every`` steps from epoch ``lookahead_start_epoch`` on,
    # a slow copy of the weights moves toward the trained ones by ``1 - rho`` and the net jumps
    # back to it; rho = lookahead_decay ** every * (step / total) ** lookahead_power grows to
    # ~0.77, so late steps are averaged strongly. 0 turns it off.
    lookahead_every: int = 0
    lookahead_start_epoch: int = 0
    lookahead_decay: float = 0.95
    lookahead_power: float = 3.0
    # Weight averaging: evaluation, and the model left at the end, use an exponential moving average
    # of the weights and batch-norm statistics, updated every step by min(ema_decay, (1 + t) / (10 + t))
    # at step t (a short memory at first, as TensorFlow's ExponentialMovingAverage). Under a high
    # learning rate the raw weights are noisy and the average far better early on. 0 turns it off.
    ema_decay: float = 0.0

    def __post_init__(self):
        if not 0 < self.tta_share <= 1:
            raise ValueError(f"recipe {self.name!r}: tta_share must be in (0, 1], not {self.tta_share!r}")
        if self.trainer != "fast" and not float(self.epochs).is_integer():
            raise ValueError(f"recipe {self.name!r}: Keras' fit trains whole epochs, not {self.epochs!r}")

    def with_overrides(self, **overrides) -> "Recipe":
        """A copy with the given fields replaced; ``None`` values are ignored."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def to_dict(self) -> dict:
        return asdict(self)
