"""The seed notebook's result, reproduced by cifarlab, against the notebook's own code in the same run.

1. ``notebook``: the notebook's pipeline verbatim in spirit (tensorflow.keras, x/255
   as float64, one-hot labels, the same Sequential CNN, adam, batch 32, up to 15
   epochs, EarlyStopping(val_loss, patience 2), the test set as validation data).
2. ``cifarlab``: ``cifarlab train --model seed --recipe seed --validate-on test``.

Each runs in its own process; we record epochs, training seconds (fit only), test
accuracy and the process's peak RSS. Early stopping with patience 2 makes a single
run's accuracy swing by a few points (one run here stopped at 64.4 %, the notebook
pipeline beside it at 65.3 %), so both pipelines run ``--repeats`` times (default 3,
interleaved, cifarlab with seeds 0, 1, 2) and the checks use the means. Targets (issue 2): cifarlab's accuracy within
+-2 points of 67.2 %, its training time no worse than the notebook pipeline's, peak
memory <= 4 GiB.

    .venv/bin/python benchmarks/seed_reproduction.py [--data PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from _common import PEAK_SNIPPET, ROOT, SHARED_ARCHIVE, record, run_measured

NOTEBOOK = PEAK_SNIPPET + """
import os, time, json
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np
from cifarlab.data.cifar import read_official   # the notebook used keras.datasets; same arrays, offline
from pathlib import Path
a = read_official(Path(sys.argv[1]))
x_train, y_train, x_test, y_test = a.x_train, a.y_train[:, None], a.x_test, a.y_test[:, None]
x_train = x_train / 255
x_test = x_test / 255
from tensorflow.keras.utils import to_categorical
y_cat_train = to_categorical(y_train, 10)
y_cat_test = to_categorical(y_test, 10)
from tensorflow.keras.models import Sequential
from tensorflow.keras.layers import Dense, Conv2D, MaxPool2D, Flatten, Input
from tensorflow.keras.callbacks import EarlyStopping
model = Sequential()
model.add(Input((32, 32, 3)))
model.add(Conv2D(filters=32, kernel_size=(4, 4), activation="relu"))
model.add(MaxPool2D(pool_size=(2, 2)))
model.add(Conv2D(filters=32, kernel_size=(4, 4), activation="relu"))
model.add(MaxPool2D(pool_size=(2, 2)))
model.add(Flatten())
model.add(Dense(256, activation="relu"))
model.add(Dense(10, activation="softmax"))
model.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
early_stop = EarlyStopping(monitor="val_loss", patience=2)
t = time.perf_counter()
model.fit(x_train, y_cat_train, epochs=15, validation_data=(x_test, y_cat_test), callbacks=[early_stop], verbose=2)
train_seconds = time.perf_counter() - t
loss, acc = model.evaluate(x_test, y_cat_test, verbose=0)
print("RESULT=" + json.dumps({"epochs": len(model.history.history["loss"]), "train_seconds": train_seconds,
                              "test_accuracy": acc, "test_loss": loss}))
"""
CIFARLAB = PEAK_SNIPPET + """
import json
from cifarlab.cli import main
rc = main(["train", "--model", "seed", "--recipe", "seed", "--validate-on", "test", "--data", sys.argv[1],
           "--out", sys.argv[2], "--seed", sys.argv[3], "--quiet"])
m = json.load(open(sys.argv[2] + "/metrics.json"))
print("RESULT=" + json.dumps({k: m[k] for k in ("epochs", "train_seconds", "test_accuracy", "test_loss")}))
raise SystemExit(rc)
"""


def run(code: str, *args: str) -> dict:
    r = run_measured([sys.executable, "-c", code, *args])
    if r["returncode"] != 0:
        raise SystemExit(f"benchmark child failed:\n{r['stderr'][-3000:]}")
    result = json.loads(r["stdout"].split("RESULT=")[-1].splitlines()[0])
    return {**result, "peak_rss_mib": r["peak_rss_mib"], "process_seconds": r["wall_seconds"]}


def main() -> None:
    import statistics

    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(SHARED_ARCHIVE))
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    runs = {"notebook": [], "cifarlab": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(a.repeats):  # interleaved: load on a shared machine drifts over minutes
            runs["notebook"].append(run(NOTEBOOK, a.data))
            runs["cifarlab"].append(run(CIFARLAB, a.data, str(Path(tmp) / f"run{i}"), str(i)))
            print(f"repeat {i}: " + json.dumps({k: v[-1] for k, v in runs.items()}), flush=True)
    mean = {k: {f: statistics.mean(r[f] for r in v) for f in ("epochs", "train_seconds", "test_accuracy")}
            | {"peak_rss_mib": max(r["peak_rss_mib"] for r in v)} for k, v in runs.items()}
    nb, cl = mean["notebook"], mean["cifarlab"]
    checks = {
        "mean_accuracy_within_2_points_of_67.2": abs(cl["test_accuracy"] * 100 - 67.2) <= 2.0,
        "mean_train_time_no_worse_than_notebook": cl["train_seconds"] <= nb["train_seconds"],
        "peak_memory_le_4_gib": cl["peak_rss_mib"] <= 4096,
    }
    table = ("| pipeline | run | epochs | training s | test accuracy | peak RSS MiB |\n|---|---|---|---|---|---|\n"
             + "".join(f"| {k} | {i} | {r['epochs']} | {r['train_seconds']:.0f} | {r['test_accuracy']:.2%} | "
                       f"{r['peak_rss_mib']:.0f} |\n" for k, v in runs.items() for i, r in enumerate(v))
             + "".join(f"| **{k}** | mean | {m['epochs']:.1f} | {m['train_seconds']:.0f} | {m['test_accuracy']:.2%} | "
                       f"{m['peak_rss_mib']:.0f} (max) |\n" for k, m in mean.items()))
    table += (f"\nTraining time ratio cifarlab / notebook (means): {cl['train_seconds'] / nb['train_seconds']:.2f}. "
              + "Checks: " + ", ".join(f"{k}: {'met' if ok else 'MISSED'}" for k, ok in checks.items()) + ".")
    print(table)
    record("seed_reproduction", {"data": a.data, "repeats": a.repeats, "runs": runs, "mean": mean, "checks": checks},
           table)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    main()
