"""How fast cifarlab reads the whole shared CIFAR-10 archive into arrays, and how much memory it takes.

Baseline, in the same run: only decompressing the archive (gzip through tarfile,
no parsing). Each measurement is a fresh process (peak RSS is per process);
median of 3. Target (issue 2): <= 5 s and <= 1 GiB peak.

    .venv/bin/python benchmarks/data_loading.py [--data PATH] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys

from _common import PEAK_SNIPPET, SHARED_ARCHIVE, record, run_measured

BASELINE = PEAK_SNIPPET + """
import tarfile, time
t = time.perf_counter()
with tarfile.open(sys.argv[1]) as tar:
    n = sum(len(tar.extractfile(m).read()) for m in tar if m.isfile())
print(f"SECONDS={time.perf_counter() - t:.3f}")
"""
CIFARLAB = PEAK_SNIPPET + """
import time
t = time.perf_counter()
from cifarlab.data import load_dataset
d = load_dataset(sys.argv[1])
assert len(d.y_train) + len(d.y_val) == 50000 and len(d.y_test) == 10000
print(f"SECONDS={time.perf_counter() - t:.3f}")
"""


def measure(code: str, data: str) -> dict:
    r = run_measured([sys.executable, "-c", code, data])
    if r["returncode"] != 0:
        raise SystemExit(r["stderr"][-2000:])
    seconds = float(r["stdout"].split("SECONDS=")[1].split()[0])
    return {"seconds": seconds, "peak_rss_mib": r["peak_rss_mib"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(SHARED_ARCHIVE))
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    runs = {"decompress_only": [], "cifarlab_load_dataset": []}
    for _ in range(a.repeats):  # interleaved, so drift in machine load hits both alike
        runs["decompress_only"].append(measure(BASELINE, a.data))
        runs["cifarlab_load_dataset"].append(measure(CIFARLAB, a.data))
    med = {k: {"seconds": statistics.median(r["seconds"] for r in v),
               "peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in v)} for k, v in runs.items()}
    ratio = med["cifarlab_load_dataset"]["seconds"] / med["decompress_only"]["seconds"]
    ok = med["cifarlab_load_dataset"]["seconds"] <= 5 and med["cifarlab_load_dataset"]["peak_rss_mib"] <= 1024
    figures = {"data": a.data, "repeats": a.repeats, "runs": runs, "median": med,
               "ratio_to_decompress_only": round(ratio, 2), "target": "<= 5 s and <= 1024 MiB", "met": ok}
    table = (
        "| step | median seconds | peak RSS (MiB) |\n|---|---|---|\n"
        + "".join(f"| {k} | {v['seconds']:.2f} | {v['peak_rss_mib']:.0f} |\n" for k, v in med.items())
        + f"\nLoading takes {ratio:.2f}x the time of decompression alone. Target <= 5 s and <= 1 GiB: "
        + ("met." if ok else "**missed**.")
    )
    print(table)
    record("data_loading", figures, table)


if __name__ == "__main__":
    main()
