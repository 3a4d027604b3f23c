"""``cifarlab runs [DIR]``: every run directory under DIR in one pandas table, no server needed."""

from __future__ import annotations

import json
import os
from pathlib import Path

from cifarlab.errors import CifarlabError

COLUMNS = ("run", "status", "recipe", "model", "data", "train_images", "epochs", "test_accuracy",
           "tta_test_accuracy", "val_accuracy", "train_seconds", "cpu", "gpus", "started")


def find_runs(root: Path) -> list[Path]:
    """Folders under ``root`` (itself included) holding a ``config.json`` with a training request."""
    found = []
    for config in sorted(root.rglob("config.json")):
        if "checkpoint" in config.parts:
            continue
        found.append(config.parent)
    return found


def _row(run_dir: Path, root: Path) -> dict | None:
    try:
        config = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict) or "request" not in config:
        return None  # some other config.json (not a run)
    metrics = {}
    if (run_dir / "metrics.json").is_file():
        try:
            metrics = json.loads((run_dir / "metrics.json").read_text())
        except (OSError, ValueError):
            metrics = {}
    env = config.get("environment") or {}
    data = config.get("data") or {}
    recipe = config.get("recipe") or {}
    overrides = (config.get("request") or {}).get("overrides") or {}
    status = "finished" if metrics else ("interrupted" if (run_dir / "checkpoint").exists() else "incomplete")
    return {"run": str(run_dir.relative_to(root)) if run_dir != root else run_dir.name, "status": status,
            "recipe": recipe.get("name", "?") + (f" +{len(overrides)} set" if overrides else ""),
            "model": config.get("model"), "data": data.get("dataset"), "train_images": data.get("num_train"),
            "epochs": metrics.get("epochs"), "test_accuracy": metrics.get("test_accuracy"),
            "tta_test_accuracy": metrics.get("tta_test_accuracy"), "val_accuracy": metrics.get("val_accuracy"),
            "train_seconds": metrics.get("train_seconds"), "cpu": env.get("cpu_model"),
            "gpus": ", ".join(env.get("gpus") or []) or None, "started": config.get("started")}


def runs_table(root: str | os.PathLike = "runs"):
    """A DataFrame with one row per run directory under ``root`` (columns :data:`COLUMNS`), newest first."""
    import pandas as pd

    root = Path(root)
    if not root.is_dir():
        raise CifarlabError(f"{root} is not a folder")
    rows = [r for r in (_row(d, root) for d in find_runs(root)) if r is not None]
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    return frame.sort_values("started", ascending=False, na_position="last", ignore_index=True)
