"""Recipe overrides by field name: ``--set key=value`` and tuning spaces.

One path for every override of a recipe field (:func:`override_recipe`), so that a
change in how recipes are laid out is made here only. Values are checked against
the field's declared type; an unknown name or a value of the wrong type is a
one-line :class:`CifarlabError`.
"""

from __future__ import annotations

import dataclasses
import types
import typing

from cifarlab.errors import CifarlabError
from cifarlab.training.recipes import Recipe

# Fields that name or describe a recipe rather than change how it trains.
NOT_OVERRIDABLE = ("name", "description")


def field_types() -> dict[str, tuple[type, ...]]:
    """Overridable recipe field -> the Python types it accepts (``type(None)`` for optional ones)."""
    out = {}
    for name, hint in typing.get_type_hints(Recipe).items():
        if name in NOT_OVERRIDABLE:
            continue
        args = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        out[name] = tuple(args)
    return out


def coerce(name: str, value):
    """``value`` as recipe field ``name`` takes it; raises CifarlabError for an unknown name or a bad type.

    Whole numbers pass for float fields, lists for tuple fields (YAML and JSON have no tuples).
    """
    kinds = field_types()
    if name not in kinds:
        raise CifarlabError(f"unknown recipe field {name!r}; choose from {', '.join(sorted(kinds))}")
    want = kinds[name]
    if value is None and type(None) in want:
        return None
    if isinstance(value, bool):  # bool is an int in Python; only a bool field takes one
        if bool in want:
            return value
    elif int in want and isinstance(value, int):
        return value
    elif float in want and isinstance(value, (int, float)):
        return float(value)
    elif str in want and isinstance(value, str):
        return value
    elif tuple in want and isinstance(value, (list, tuple)):
        return _tuples(value)
    names = " or ".join("null" if t is type(None) else t.__name__ for t in want)
    raise CifarlabError(f"recipe field {name!r} takes {names}, not {value!r}")


def _tuples(value):
    return tuple(_tuples(v) if isinstance(v, (list, tuple)) else v for v in value)


def parse_assignments(items: list[str] | None) -> dict:
    """``["key=value", ...]`` (``--set``) as a dict of checked recipe fields; values are YAML scalars or lists.

    The values stay JSON's types (lists, not tuples), so a request saved in ``config.json``
    compares equal to itself when a run is resumed.
    """
    import yaml

    out = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise CifarlabError(f"--set takes key=value, not {item!r}")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        out[key] = plain(coerce(key, value))
    return out


def plain(value):
    """``value`` with tuples as lists, as it reads back from JSON."""
    return [plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def override_recipe(recipe: Recipe, overrides: dict | None) -> Recipe:
    """``recipe`` with the named fields replaced (checked by :func:`coerce`); the one override path."""
    if not overrides:
        return recipe
    checked = {k: coerce(k, v) for k, v in overrides.items()}
    try:  # dataclasses.replace, not with_overrides: None is a value here (early_stopping_patience)
        return dataclasses.replace(recipe, **checked)
    except ValueError as e:  # the recipe's own consistency checks (Recipe.__post_init__)
        raise CifarlabError(str(e)) from None
