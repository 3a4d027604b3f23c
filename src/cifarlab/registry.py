"""The one place where models and recipes are named.

``MODELS`` and ``RECIPES`` map a name to plain data (:class:`ModelSpec`,
:class:`Recipe`). Nothing here imports TensorFlow.
"""

from __future__ import annotations

from cifarlab.errors import CifarlabError
from cifarlab.models import ModelSpec
from cifarlab.recipes import FastOptions, FitOptions, Recipe

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
    precision="fp32",
    options=FitOptions(
        early_stopping_patience=2,  # EarlyStopping(monitor='val_loss', patience=2)
        monitor="val_loss",
        restore_best_weights=False,  # the notebook kept the last epoch's weights
    ),
))

register_model(ModelSpec("fast", "cifarlab.models.fast:build_fast",
                         "airbench-style VGG: whitening conv, 3 blocks (64, 256, 256), batch norm, SiLU"))
register_model(ModelSpec("quick", "cifarlab.models.fast:build_quick",
                         "the fast design at widths (32, 64, 128), for demos and tests"))

# The fast loop's optimiser, after airbench's Muon record ("airbench94_muon"), restated for a
# loss that is a mean over the batch (airbench sums it): see docs/fast.md for the conversions.
_MUON = dict(
    trainer="fast",
    precision="auto",  # bf16 where the hardware has it: ~3x the speed, same accuracy
    optimizer="muon",  # conv kernels by Muon: +1.5 points over Nesterov SGD at equal epochs
    batch_size=2000,  # airbench-Muon's size; 25 steps an epoch, and big batches keep the 2 cores busy
    learning_rate=1.66,  # SGD for the classifier: airbench's 0.67 per summed example, through its 1/256 head
)
_MUON_OPTIONS = dict(
    muon_lr=0.24,  # airbench's; each step moves every kernel by ~0.24 of its (fixed) norm per direction
    muon_momentum=0.6,  # airbench's: the orthogonalisation already evens out the steps
    momentum=0.85,  # ... Nesterov SGD as airbench
    nesterov=True,
    bias_lr_scale=64.0,  # BN shifts and the whitening bias: 64 x 1.66 = 106, airbench's 0.053 x 2000
    weight_decay=0.0024,  # decoupled: 1.66 x 0.0024 = 0.004 of each weight per step (airbench: 2e-6 x 2000);
    #                       0.0024 / 64 for the biases, so they decay at the same rate per step
    label_smoothing=0.2,  # airbench's: a calmer start
    lr_end_factor=0.0,  # ... then linearly down to 0 at the end
    translate=2,  # random crops of a 2-pixel reflect-padded image
    flip="alternating",  # each image mirrored in exactly every other epoch
    tta="flip_translate",  # +~1 point for 6 test passes
    whiten_init_images=5000,  # enough for a stable 12x12 covariance
    whiten_bias_epochs=3,  # then frozen: it has found its place
)

register_recipe(Recipe(
    name="fast",
    model="fast",
    description="airbench-style: Muon for conv kernels, Nesterov SGD for the rest, label smoothing, "
                "flip + translate, TTA; 10 epochs, the first 6 on 28x28 windows",
    epochs=10,  # 10 epochs in the time of 8.4 whole-image ones, thanks to the crops below
    **_MUON,
    options=FastOptions(
        # 28x28 windows cost 0.73x a whole image's step; the last 4 epochs see whole images, the test size.
        crops=((28, 0.6),),
        # TTA only for the least confident quarter of the test images: 2.25 passes instead of 6, same accuracy.
        **{**_MUON_OPTIONS, "tta_share": 0.25}),
))  # measurements behind these choices: benchmarks/RESULTS.md, 2026-11-29
register_recipe(Recipe(
    name="quick",
    model="quick",
    description="the fast recipe on the small quick net (ReLU), 8 epochs (under 2 minutes on 2 cores): demos, tests",
    epochs=8,
    # A quarter of fast's batch: 4x the steps in about the same time on this small net, so it reaches
    # 65 % sooner (the point of quick), for a point less at the end; the SGD rate scales with the batch.
    **{**_MUON, "batch_size": 500, "learning_rate": 0.415},
    # Evaluated and saved as a moving average of its weights: usable within seconds of the start.
    options=FastOptions(**_MUON_OPTIONS, ema_decay=0.9),
))  # measurements: benchmarks/RESULTS.md (quick at batch 500, 0c6513c; quick's weight average, 0c8fe3b)
