"""cifarlab: train, evaluate, explain and serve image classifiers for small colour images.

The Python API mirrors the command line::

    import cifarlab
    data = cifarlab.load_dataset("cifar-10-binary.tar.gz")      # cifarlab info
    run = cifarlab.train(recipe="seed", data="cifar-10-binary.tar.gz", limit=2000)   # cifarlab train
    metrics = cifarlab.evaluate(run.run_dir)                      # cifarlab evaluate
    cifarlab.predict(run.run_dir, ["cat.png"])                    # cifarlab predict

TensorFlow is imported only by the functions that need it.
"""

from __future__ import annotations

import os

__version__ = "0.1.0"

# TensorFlow's C++ start-up chatter (oneDNN notices, CPU feature lists) is noise to
# a user; real errors still surface as Python exceptions.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from cifarlab.errors import CifarlabError  # noqa: E402
from cifarlab.registry import MODELS, RECIPES, get_model, get_recipe  # noqa: E402

_LAZY = {
    "load_dataset": "cifarlab.data",
    "Dataset": "cifarlab.data",
    "train": "cifarlab.training.train",
    "TrainConfig": "cifarlab.training.train",
    "Run": "cifarlab.training.train",
    "evaluate": "cifarlab.evaluation.evaluate",
    "load_model": "cifarlab.models.io",
    "predict": "cifarlab.serving.predict",
    "predict_arrays": "cifarlab.inference.predict",
    "dataset_info": "cifarlab.data.info",
    "build_report": "cifarlab.evaluation.report",
}

__all__ = ["CifarlabError", "MODELS", "RECIPES", "get_model", "get_recipe", "__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cifarlab' has no attribute {name!r}")
