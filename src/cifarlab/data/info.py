"""What the seed notebook explored by hand, in one call."""

from __future__ import annotations

import numpy as np


def dataset_info(ds) -> dict:
    """Shapes, dtype, pixel range, images per class and class names of a :class:`Dataset`."""
    out = {"source": ds.source, "dataset": ds.name, "format": ds.format, "class_names": ds.class_names,
           "validation": ds.validation, "splits": {}}
    for split in ("train", "val", "test"):
        x, y = getattr(ds, f"x_{split}"), getattr(ds, f"y_{split}")
        out["splits"][split] = {
            "shape": list(x.shape), "dtype": str(x.dtype),
            "pixel_min": int(x.min()) if x.size else None, "pixel_max": int(x.max()) if x.size else None,
            "per_class": {n: int(c) for n, c in zip(ds.class_names, np.bincount(y, minlength=ds.num_classes))},
        }
    return out


def format_info(info: dict) -> str:
    lines = [f"source      {info['source']}", f"dataset     {info['dataset']} ({info['format']} format)",
             f"classes     {len(info['class_names'])}: " + ", ".join(
                 f"{i} {n}" for i, n in enumerate(info["class_names"])),
             f"validation  {info['validation']}", ""]
    names = {"train": "train", "val": "validation", "test": "test"}
    for split, s in info["splits"].items():
        lines.append(f"{names[split]:<11} {tuple(s['shape'])} {s['dtype']}, pixels {s['pixel_min']}-{s['pixel_max']}")
    lines += ["", "images per class"]
    header = f"  {'class':<14}" + "".join(f"{names[s]:>12}" for s in info["splits"])
    lines.append(header)
    for n in info["class_names"]:
        lines.append(f"  {n:<14}" + "".join(f"{info['splits'][s]['per_class'][n]:>12,}" for s in info["splits"]))
    return "\n".join(lines)
