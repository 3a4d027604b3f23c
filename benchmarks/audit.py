"""How well ``cifarlab audit`` finds planted label errors, how long it takes and how much memory.

1. Planted noise: a copy of the shared CIFAR-10 (official binary layout) with ``--flips`` (1,000)
   of the 50,000 training labels moved to another class, uniformly, by a fixed ``--noise-seed``;
   ``cifarlab audit`` with its default settings on it, as a child process (wall time, CPU time,
   peak RSS). Precision, recall and F1 of the label-issue list against the planted flips (every
   unplanted flag counts as a false positive, though some are real CIFAR errors: the benchmark
   draws the 48 most suspect unplanted ones into ``WORK/unplanted.png`` for inspection).
2. Duplicates on the unmodified copy (a second audit; ``--skip-clean`` leaves it out): the share
   of test images with a near-duplicate in train or test, against ciFAIR's 3.25 % (Barz & Denzler,
   2020); its audit.html shows 20 random pairs.

The machine's load average is recorded before and after each audit: on a shared machine the
wall time says little without it (CPU seconds say more).

    .venv/bin/python benchmarks/audit.py [--work DIR] [--noise-seed N] [--skip-clean]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import tarfile
from pathlib import Path

import numpy as np

from _common import PEAK_SNIPPET, SHARED_ARCHIVE, record, run_measured

FOLDER = "cifar-10-batches-bin"
RECORD = 3073
CHILD = PEAK_SNIPPET + "from cifarlab.cli import main\nsys.exit(main(sys.argv[1:]))\n"
TARGETS = {"f1": 0.8, "wall_seconds": 600, "peak_rss_mib": 4096, "cifair_share": 0.0325}


def planted_copy(src: Path, dest: Path, flips: int, seed: int) -> np.ndarray:
    """Write ``dest`` (an uncompressed .tar in the official binary layout): ``src`` with ``flips`` training
    labels changed to another class. Returns the int64 positions (0-49,999, source order) flipped."""
    rng = np.random.default_rng(seed)
    flipped = np.sort(rng.choice(50_000, size=flips, replace=False))
    shift = rng.integers(1, 10, size=flips)  # to any other of the 10 classes, uniformly
    files = {}
    with tarfile.open(src) as tar:
        for m in tar.getmembers():
            if m.isfile():
                files[m.name] = bytearray(tar.extractfile(m).read())
    for pos, k in zip(flipped, shift):
        batch, i = divmod(int(pos), 10_000)
        data = files[f"{FOLDER}/data_batch_{batch + 1}.bin"]
        data[i * RECORD] = (data[i * RECORD] + int(k)) % 10
    tmp = dest.with_suffix(".tmp")
    with tarfile.open(tmp, "w") as out:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            out.addfile(info, io.BytesIO(bytes(data)))
    os.replace(tmp, dest)
    return flipped


def run_audit(data: Path, out: Path, extra: list[str]) -> dict:
    load = os.getloadavg()
    r = run_measured([sys.executable, "-c", CHILD, "audit", "--data", str(data), "-o", str(out), "--quiet", *extra],
                     timeout=7200)
    if r["returncode"] != 0:
        raise SystemExit(f"audit failed ({r['returncode']}): {r['stderr'][-2000:]}")
    summary = json.loads((out / "audit.json").read_text())
    return {"wall_seconds": r["wall_seconds"], "peak_rss_mib": r["peak_rss_mib"],
            "cpu_seconds": round(r["cpu_seconds"], 1),
            "load_average_before": [round(v, 2) for v in load],
            "load_average_after": [round(v, 2) for v in os.getloadavg()],
            "stdout": r["stdout"].strip()[-500:], "summary": summary}


def label_scores(findings: Path, flipped: np.ndarray) -> dict:
    rows = [r for r in csv.DictReader(findings.open()) if r["kind"] == "label"]
    flagged = np.array([int(r["index"]) for r in rows], dtype=np.int64)
    hit = np.isin(flagged, flipped)
    tp = int(hit.sum())
    precision = tp / len(flagged) if len(flagged) else 0.0
    recall = tp / len(flipped)
    f1 = 2 * precision * recall / (precision + recall) if tp else 0.0
    return {"flagged": len(flagged), "true_positives": tp, "false_positives": int((~hit).sum()),
            "missed": int(len(flipped) - tp), "precision": round(precision, 4), "recall": round(recall, 4),
            "f1": round(f1, 4), "unplanted_top": [int(i) for i in flagged[~hit][:48]]}


def draw_unplanted(data: Path, indices: list[int], rows: list[dict], path: Path) -> None:
    from cifarlab.data import load_dataset
    from cifarlab.evaluation.plots import plot_grid

    ds = load_dataset(data, validate_on="test", quiet=True)
    by_index = {int(r["index"]): r for r in rows}
    labels = [f"#{i} {by_index[i]['given_label']}->{by_index[i]['suggested_label']}" for i in indices]
    plot_grid(ds.x_train[indices], labels, path)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(SHARED_ARCHIVE))
    ap.add_argument("--work", default="/tmp/cifarlab-audit-benchmark", help="folder for the copies and audits")
    ap.add_argument("--flips", type=int, default=1000)
    ap.add_argument("--noise-seed", type=int, default=2026, help="the benchmark's; tune on another")
    ap.add_argument("--skip-clean", action="store_true", help="no second audit of the unmodified copy")
    ap.add_argument("--name", default="audit", help="results/NAME.json and the RESULTS.md section")
    ap.add_argument("audit_args", nargs="*", help="extra `cifarlab audit` flags, after --")
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    noisy = work / f"cifar10-flipped-{a.flips}-seed{a.noise_seed}.tar"
    flipped = planted_copy(Path(a.data), noisy, a.flips, a.noise_seed)
    res = run_audit(noisy, work / f"audit-noisy-seed{a.noise_seed}", a.audit_args)
    findings = work / f"audit-noisy-seed{a.noise_seed}" / "findings.csv"
    scores = label_scores(findings, flipped)
    rows = [r for r in csv.DictReader(findings.open()) if r["kind"] == "label"]
    draw_unplanted(noisy, scores["unplanted_top"], rows, work / "unplanted.png")
    figures = {"data": a.data, "flips": a.flips, "noise_seed": a.noise_seed, "audit_args": a.audit_args,
               "noisy": {k: v for k, v in res.items() if k != "summary"}, "labels": scores,
               "noisy_summary": {k: res["summary"][k] for k in ("counts", "out_of_fold_accuracy", "test", "timings",
                                                                "folds", "label_method")},
               "settings": res["summary"]["settings"], "targets": TARGETS}
    if not a.skip_clean:
        clean = run_audit(Path(a.data), work / "audit-clean", a.audit_args)
        figures["clean"] = {k: v for k, v in clean.items() if k != "summary"}
        figures["clean_summary"] = {k: clean["summary"][k] for k in ("counts", "test", "duplicates", "timings", "folds")}
    s, t = res["summary"], res["summary"]["timings"]
    table = [
        "| figure | value | target |", "|---|---|---|",
        f"| label issues flagged / planted flips found | {scores['flagged']:,} / {scores['true_positives']:,} of {a.flips:,} | |",
        f"| precision / recall / **F1** | {scores['precision']:.3f} / {scores['recall']:.3f} / **{scores['f1']:.3f}** | F1 >= 0.8 |",
        f"| out-of-fold accuracy (noisy labels) | {s['out_of_fold_accuracy']:.4f} | |",
        f"| whole audit, wall (CPU) seconds | {res['wall_seconds']:.0f} ({res['cpu_seconds']:.0f}) | <= 600 |",
        f"| cross-fit / duplicates / report seconds | {t['cross_fit_seconds']:.0f} / {t['duplicate_seconds']:.0f} / "
        f"{t.get('report_seconds', 0):.0f} | |",
        f"| fold training seconds | {', '.join(f'{v:.0f}' for v in s['folds']['seconds'])} | |",
        f"| peak RSS | {res['peak_rss_mib']:.0f} MiB | <= 4096 MiB |",
        f"| load average before / after (1 min) | {res['load_average_before'][0]:.1f} / {res['load_average_after'][0]:.1f} | |",
    ]
    if "clean_summary" in figures:
        c = figures["clean_summary"]
        table += [
            f"| unmodified copy: test images with a near-duplicate in train or test | "
            f"{c['test']['images_with_near_duplicate']:,} ({c['test']['share_with_near_duplicate']:.2%}) | ciFAIR: 3.25 % |",
            f"| unmodified copy: leaks / duplicates / exact pairs | {c['counts']['leak']:,} / {c['counts']['duplicate']:,} / "
            f"{c['duplicates']['exact']:,} | |",
            f"| unmodified copy: test accuracy with / without leaked test images | {c['test']['accuracy']:.4f} / "
            f"{c['test']['accuracy_without_leaked']:.4f} | |",
            f"| unmodified copy: whole audit, wall (CPU) seconds; peak RSS | {figures['clean']['wall_seconds']:.0f} "
            f"({figures['clean']['cpu_seconds']:.0f}); {figures['clean']['peak_rss_mib']:.0f} MiB | |",
        ]
    cmd = "`benchmarks/audit.py" + (f" --noise-seed {a.noise_seed}" if a.noise_seed != 2026 else "") + "`"
    out = record(a.name, figures, f"{cmd}: {a.flips:,} planted flips (noise seed {a.noise_seed}), "
                                  f"`cifarlab audit` defaults.\n\n" + "\n".join(table))
    print(json.dumps({"labels": scores, "wall_seconds": res["wall_seconds"], "peak_rss_mib": res["peak_rss_mib"]},
                     indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
