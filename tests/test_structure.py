"""The package's layout: imports point one way (data -> models -> inference -> training -> evaluation -> serving).

Every ``import`` in a file counts, function-level ones too: a lazy import back is still a cycle
between two parts, only one that fails later.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "cifarlab"


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    return ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)


def _imports(path: Path) -> set[str]:
    """Every module a file names in an import: ``a.b`` for ``import a.b``, ``a.b`` and ``a.b.c`` for
    ``from a.b import c`` (``c`` may be a module), relative imports resolved."""
    me = _module_name(path).split(".")
    package = me if path.name == "__init__.py" else me[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)
    return out


def _graph(level: int) -> dict[str, set[str]]:
    """Import edges between cifarlab's modules cut to their first ``level`` names below ``cifarlab``
    (1: top-level parts such as ``training``, ``registry``; 2: modules such as ``training.fast``).
    A part's own ``__init__`` is left out at level 1 (it may re-export its modules)."""
    modules = {_module_name(f): f for f in SRC.rglob("*.py")}

    def cut(name: str) -> str | None:
        bits = name.split(".")
        if bits[0] != "cifarlab" or len(bits) < 2:
            return None
        while len(bits) > 1 and ".".join(bits) not in modules:  # cifarlab.x.y.Name -> cifarlab.x.y
            bits.pop()
        return ".".join(bits[1:1 + level]) or None

    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        src = cut(name)
        if src is None or (level == 1 and path.name == "__init__.py" and name.count(".") == 1):
            continue
        for imported in _imports(path):
            dst = cut(imported)
            if dst and dst != src:
                edges.setdefault(src, set()).add(dst)
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Pairs ``(a, b)`` with ``a`` reaching ``b`` and ``b`` reaching ``a``, each pair once."""
    def reach(a: str) -> set[str]:
        seen, todo = set(), [a]
        while todo:
            for b in edges.get(todo.pop(), ()):
                if b not in seen:
                    seen.add(b)
                    todo.append(b)
        return seen

    reachable = {a: reach(a) for a in edges}
    return sorted({tuple(sorted((a, b))) for a in edges for b in edges[a] if a in reachable.get(b, ())})


def test_no_import_cycles_between_top_level_parts():
    edges = _graph(1)
    assert {"training", "evaluation", "serving", "inference", "registry"} <= set(edges)  # the check sees them
    assert _cycles(edges) == []


def test_no_import_cycles_between_modules_of_a_part():
    """Within a part too: ``training.train`` imports ``training.fast``, so ``training.fast`` never imports back."""
    assert _cycles(_graph(2)) == []


def test_the_check_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [("a", "b"), ("a", "c"), ("b", "c")]
    assert _cycles({"a": {"b"}}) == []


def test_inference_is_below_evaluation_serving_and_training():
    edges = _graph(1)
    assert "inference" in edges["evaluation"] and "inference" in edges["serving"] and "inference" in edges["training"]
    assert not edges.get("inference", set()) & {"evaluation", "serving", "training", "registry"}
