"""Recipe overrides by field name from text: ``--set key=value`` and tuning spaces.

:meth:`cifarlab.recipes.Recipe.with_overrides` changes fields by name and checks them; this
module turns what a user typed (YAML/JSON scalars and lists) into the types the fields
declare (lists into tuples, whole numbers into floats) and names the field's type in the
one-line error when a value cannot be one. Every override of a recipe goes through
:func:`override_recipe`.
"""

from __future__ import annotations

import typing
from dataclasses import fields

from cifarlab.errors import CifarlabError
from cifarlab.recipes import OPTIONS, Recipe

# Fields that name, describe or structure a recipe rather than change how it trains.
NOT_OVERRIDABLE = ("name", "description", "options", "trainer")


def field_types() -> dict[str, tuple[type, ...]]:
    """Overridable field (core or any trainer's option) -> the Python types it accepts."""
    out = {}
    for cls in (Recipe, *OPTIONS.values()):
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            if f.name in NOT_OVERRIDABLE:
                continue
            hint = hints[f.name]
            args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, type(int | None)) else (hint,)
            out[f.name] = tuple(typing.get_origin(a) or a for a in args)
    return out


def coerce(name: str, value):
    """``value`` as field ``name`` takes it; CifarlabError for an unknown name or a value of the wrong type.

    Whole numbers pass for float fields, lists for tuple fields (YAML and JSON have no tuples).
    Whether the recipe's trainer has the field is for :meth:`Recipe.with_overrides` to say.
    """
    kinds = field_types()
    if name not in kinds:
        raise CifarlabError(f"unknown recipe field {name!r}; choose from {', '.join(sorted(kinds))}")
    want = kinds[name]
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
    names = " or ".join(t.__name__ for t in want if t is not type(None))
    raise CifarlabError(f"recipe field {name!r} takes {names}, not {value!r}")


def _tuples(value):
    return tuple(_tuples(v) if isinstance(v, (list, tuple)) else v for v in value)


def plain(value):
    """``value`` with tuples as lists, as it reads back from JSON."""
    return [plain(v) for v in value] if isinstance(value, (list, tuple)) else value


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


def override_recipe(recipe: Recipe, overrides: dict | None) -> Recipe:
    """``recipe`` with the named fields replaced, checked by :func:`coerce` and by the recipe itself."""
    if not overrides:
        return recipe
    return recipe.with_overrides(**{k: coerce(k, v) for k, v in overrides.items()})
