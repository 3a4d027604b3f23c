"""Recipes: core fields plus per-trainer options, checked when built; overrides by name go through one method."""

from __future__ import annotations

import pytest

from cifarlab.errors import CifarlabError
from cifarlab.recipes import FastOptions, FitOptions, Recipe, RecipeError
from cifarlab.registry import RECIPES, get_recipe


def test_every_registered_recipe_has_its_trainers_options():
    for r in RECIPES.values():
        assert isinstance(r.options, {"fit": FitOptions, "fast": FastOptions}[r.trainer])
        assert r == Recipe(**{**{k: v for k, v in vars(r).items() if k != "options"}, "options": r.options})
    assert Recipe("x", "seed").options == FitOptions() and Recipe("x", "quick", trainer="fast", optimizer="sgd").options == FastOptions()


def test_with_overrides_routes_core_and_option_fields_and_ignores_none():
    quick = get_recipe("quick")
    r = quick.with_overrides(batch_size=64, tta_share=0.5, ema_decay=None)
    assert r.batch_size == 64 and r.options.tta_share == 0.5 and r.options.ema_decay == quick.options.ema_decay
    assert quick.batch_size == 500  # a copy: the registered recipe is unchanged
    assert get_recipe("seed").with_overrides(early_stopping_patience=5).options.early_stopping_patience == 5
    d = r.to_dict()
    assert d["batch_size"] == 64 and d["options"]["tta_share"] == 0.5 and "tta_share" not in d


@pytest.mark.parametrize("recipe, overrides, message", [
    ("seed", {"tta": "flip"}, "no field 'tta' for the 'fit' trainer"),
    ("quick", {"early_stopping_patience": 2}, "no field 'early_stopping_patience'"),
    ("quick", {"lookahead_every": 2}, "no field 'lookahead_every'"),
    ("quick", {"batch_size": "64"}, "batch_size must be int, not '64'"),
    ("quick", {"batch_size": 0}, "batch_size must be at least 1"),
    ("quick", {"nesterov": 1}, "nesterov must be bool"),
    ("quick", {"learning_rate": float("nan")}, "learning_rate must be float"),
    ("quick", {"flip": "sideways"}, "flip must be one of none, random, alternating"),
    ("quick", {"tta": "rotate"}, "tta must be one of"),
    ("quick", {"tta_share": 1.5}, "tta_share must be in (0, 1]"),
    ("quick", {"momentum": 1.0}, "momentum must be in [0, 1)"),
    ("quick", {"crops": ((28, 0.6), (24, 0.8))}, "crops must be"),
    ("quick", {"optimizer": "adam"}, "the 'fast' trainer takes optimizer sgd or muon"),
    ("quick", {"muon_lr": 0.0}, "optimizer 'muon' needs a positive muon_lr"),
    ("seed", {"optimizer": "muon"}, "the 'fit' trainer takes optimizer adam or sgd"),
    ("seed", {"epochs": 2.5}, "whole epochs"),
    ("seed", {"precision": "fp8"}, "precision must be one of auto, bf16, fp16, fp32"),
    ("seed", {"monitor": "val_los"}, "monitor must be one of"),
])
def test_bad_fields_are_one_line_errors_naming_the_recipe(recipe, overrides, message):
    with pytest.raises(RecipeError) as e:
        get_recipe(recipe).with_overrides(**overrides)
    assert message in str(e.value) and str(e.value).startswith(f"recipe {recipe!r}: ")
    assert isinstance(e.value, CifarlabError) and isinstance(e.value, ValueError)


def test_a_recipe_is_built_checked():
    with pytest.raises(RecipeError, match="trainer must be one of fit, fast"):
        Recipe("x", "seed", trainer="keras")
    with pytest.raises(RecipeError, match="a 'fit' recipe takes FitOptions"):
        Recipe("x", "seed", options=FastOptions())
    with pytest.raises(RecipeError, match="whiten_init_images must be int"):
        FastOptions(whiten_init_images=5000.0)
    assert Recipe("x", "quick", trainer="fast", optimizer="sgd", epochs=9.9).epochs == 9.9
