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
