"""``audit.html``: one self-contained page of an audit, in the style of the run report.

Galleries of suspected label errors (image, given -> suggested label, score), duplicate and
leak pairs side by side (the closest, and a random sample for judging the thresholds),
outliers and blank images, and counts per class. Images are embedded as PNG data URIs by
the run report's own helpers (:func:`cifarlab.evaluation.report.image_uri`), and the page
takes the run report's stylesheet, so the two look alike.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from cifarlab.fileio import write_text

N_LABEL = 60  # suspected label errors shown, most suspect first
N_PAIRS = 24  # closest duplicate / leak pairs shown per kind
N_RANDOM_PAIRS = 20  # pairs drawn at random (fixed seed) to judge the thresholds by eye
N_OUTLIERS = 30
SAMPLE_SEED = 0


def _environment():
    import jinja2

    return jinja2.Environment(
        loader=jinja2.ChoiceLoader([jinja2.PackageLoader("cifarlab.audit", "templates"),
                                    jinja2.PackageLoader("cifarlab.evaluation", "templates")]),
        autoescape=jinja2.select_autoescape(default=True), undefined=jinja2.StrictUndefined,
        trim_blocks=True, lstrip_blocks=True)


def run_report_style(env) -> str:
    """The CSS of the run report's template (``report.html.j2``), so both pages share one stylesheet."""
    source, _, _ = env.loader.get_source(env, "report.html.j2")
    m = re.search(r"<style>(.*?)</style>", source, re.S)
    return m.group(1) if m else ""


def _image(ds, split: str, index: int) -> np.ndarray:
    return (ds.x_train if split == "train" else ds.x_test)[index]


def _item(ds, row: dict) -> dict:
    from cifarlab.evaluation.report import image_uri

    item = {**row, "src": image_uri(_image(ds, row["split"], row["index"])),
            "name": Path(row["path"]).name if row["path"] else ""}
    if row["pair_index"] != "":
        item["pair_src"] = image_uri(_image(ds, row["pair_split"], row["pair_index"]))
        item["pair_name"] = Path(row["pair_path"]).name if row["pair_path"] else ""
    return item


def render(summary: dict, findings: list[dict], ds) -> str:
    """The page as one HTML string (every image inline)."""
    from cifarlab import __version__

    by_kind = {k: [r for r in findings if r["kind"] == k] for k in ("label", "duplicate", "leak", "outlier", "blank")}
    pairs = by_kind["duplicate"] + by_kind["leak"]
    rng = np.random.default_rng(SAMPLE_SEED)
    sample = [pairs[i] for i in np.sort(rng.choice(len(pairs), size=min(N_RANDOM_PAIRS, len(pairs)), replace=False))]

    def closest(rows):
        return sorted(rows, key=lambda r: -r["score"])[:N_PAIRS]

    env = _environment()
    return env.get_template("audit.html.j2").render(
        title=f"cifarlab audit: {summary['data']['dataset']} ({Path(summary['data']['source']).name})",
        style=run_report_style(env), s=summary, version=__version__,
        generated=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        labels=[_item(ds, r) for r in by_kind["label"][:N_LABEL]],
        leaks=[_item(ds, r) for r in closest(by_kind["leak"])],
        duplicates=[_item(ds, r) for r in closest(by_kind["duplicate"])],
        sample=[_item(ds, r) for r in sample], n_pairs=len(pairs),
        outliers=[_item(ds, r) for r in by_kind["outlier"][:N_OUTLIERS]],
        blanks=[_item(ds, r) for r in by_kind["blank"][:N_OUTLIERS]],
        counts={k: len(v) for k, v in by_kind.items()},
    )


def write_report(path: Path, summary: dict, findings: list[dict], ds) -> Path:
    write_text(path, render(summary, findings, ds))
    return path
