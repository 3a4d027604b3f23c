"""The one place where models and recipes are named.

``MODELS`` and ``RECIPES`` map a name to plain data (:class:`ModelSpec`,
:class:`Recipe`). Nothing here imports TensorFlow.
"""

from __future__ import annotations

from cifarlab.errors import CifarlabError
from cifarlab.models import ModelSpec
from cifarlab.training.recipes import Recipe

MODELS: dict[str, ModelSpec] = {}
RECIPES: dict[str, Recipe] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    MODELS[spec.name] = spec
    return spec


def register_recipe(recipe: Recipe) -> Recipe:
    RECIPES[recipe.name] = recipe
    return recipe


def get_model(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise CifarlabError(f"unknown model {name!r}; choose from {', '.join(MODELS)}") from None


def get_recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise CifarlabError(f"unknown recipe {name!r}; choose from {', '.join(RECIPES)}") from None


register_model(ModelSpec("seed", "cifarlab.models.seed:build",
                         "the seed notebook's CNN: 2x [Conv 32 4x4 + MaxPool], Dense 256 (225,610 parameters)"))

register_recipe(Recipe(
    name="seed",
    model="seed",
    description="the seed notebook's training: adam, batch 32, up to 15 epochs, early stopping on val_loss",
    optimizer="adam",
    learning_rate=1e-3,  # Keras' Adam default, which the notebook used
    batch_size=32,  # Keras' fit default, which the notebook used
    epochs=15,
    early_stopping_patience=2,  # EarlyStopping(monitor='val_loss', patience=2)
    monitor="val_loss",
    restore_best_weights=False,  # the notebook kept the last epoch's weights
    precision="fp32",
))

register_model(ModelSpec("fast", "cifarlab.models.fast:build_fast",
                         "airbench-style VGG: whitening conv, 3 blocks (64, 256, 256), batch norm, GELU"))
register_model(ModelSpec("quick", "cifarlab.models.fast:build_quick",
                         "the fast design at widths (32, 64, 128), for demos and tests"))

register_recipe(Recipe(
    name="fast",
    model="fast",
    description="airbench-style: Nesterov SGD, warm-up + linear decay, label smoothing, flip + translate, TTA",
    trainer="fast",
    precision="auto",  # bf16 where the hardware has it: ~3x the speed, same accuracy (issue 3)
    optimizer="sgd",
    batch_size=1024,  # large batches keep the 2 cores busy; airbench's size
    learning_rate=1.5,  # airbench's 11.5 per 1024 "kilostep" = 11.5 * 1024 / 7850 on a mean loss
    momentum=0.85,  # airbench: lower momentum suits the short run
    nesterov=True,
    weight_decay=0.0153 / 7850,  # airbench's 0.0153 per kilostep-scaled lr, on a mean loss
    bias_lr_scale=64.0,  # BN shifts and the whitening bias learn 64x faster (airbench)
    label_smoothing=0.2,  # airbench: +0.2 points, and a calmer start
    warmup_fraction=0.23,  # airbench: 23% of steps to ramp up ...
    lr_start_factor=0.2,  # ... from 0.2x ...
    lr_end_factor=0.07,  # ... then linearly down to 0.07x at the end
    translate=2,  # random crops of a 2-pixel reflect-padded image
    flip="alternating",  # each image mirrored in exactly every other epoch
    tta="flip_translate",  # +~0.8 points at 6x the cost of one test pass
    whiten_init_images=5000,  # enough for a stable 12x12 covariance
    whiten_bias_epochs=3,  # then frozen: it has found its place
    jit_compile=False,  # XLA on CPU: 5x slower here (no oneDNN convolutions); see benchmarks/RESULTS.md
    epochs=6,  # what fits 8 minutes of training + evaluation on 2 shared cores (airbench: 9.9)
))
register_recipe(Recipe(
    name="quick",
    model="quick",
    description="the fast recipe on the small quick net, 4 epochs (~2 minutes on 2 cores): demos, tests",
    trainer="fast",
    precision="auto",
    optimizer="sgd",
    batch_size=512,  # a short run needs more, smaller steps than fast's 1024 ...
    learning_rate=0.75,  # ... with the learning rate scaled by batch size, as airbench's is
    momentum=0.85,
    nesterov=True,
    weight_decay=0.0153 / 7850,
    bias_lr_scale=64.0,
    label_smoothing=0.2,
    warmup_fraction=0.23,
    lr_start_factor=0.2,
    lr_end_factor=0.07,
    translate=2,
    flip="alternating",
    tta="flip_translate",
    whiten_init_images=5000,
    whiten_bias_epochs=3,
    jit_compile=False,  # XLA on CPU: 5x slower here (no oneDNN convolutions); see benchmarks/RESULTS.md
    epochs=4,  # 97 s train + TTA on 2 cores: 82.6 % TTA (2 epochs: 55 s, 77.1 %); benchmarks/RESULTS.md
))
