#!/usr/bin/env python
"""The test suite's wall and CPU time, this tree against a baseline commit, in the same run.

The machines are shared and their speed moves by tens of percent from hour to hour, so
one suite run says little about a change of a few percent. This runs the baseline (a git
worktree of ``--baseline``) and this tree alternately, in the order baseline, this, this,
baseline, ... (ABBA: a slow drift of the machine's speed weighs on both alike), with
the same pytest command as ``make test``, and reports each run and the ratio of the means.

    benchmarks/test_suite.py --baseline 8a9817a --rounds 2

Figures: ``results/test_suite_ab.json`` and the ``test_suite_ab`` section of RESULTS.md.
Needs the project's ``.venv`` (``make test`` makes it); each tree imports its own ``src``.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

from _common import ROOT, record, run_measured, worktree

PYTEST = ["-m", "pytest", "-q", "-p", "no:cacheprovider"]


def run_suite(tree: Path) -> dict:
    """One suite run in ``tree``: wall seconds, CPU seconds (user + system of every process it waited for),
    and the pytest summary line."""
    os.chdir(tree)
    r = run_measured([sys.executable, *PYTEST, str(tree / "tests"), "--rootdir", str(tree)],
                     env={"PYTHONPATH": str(tree / "src")}, timeout=3 * 3600)
    summary = next((ln.strip("= ") for ln in reversed(r["stdout"].splitlines()) if " passed" in ln or " failed" in ln),
                   "no summary")
    if r["returncode"] != 0:
        sys.exit(f"test_suite: the suite failed in {tree} ({summary}):\n{r['stdout'][-3000:]}")
    return {"wall_seconds": r["wall_seconds"], "cpu_seconds": round(r["cpu_seconds"], 1),
            "summary": re.sub(r" in [\d.]+s.*", "", summary)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", required=True, help="the commit to compare with (a git worktree of it)")
    ap.add_argument("--rounds", type=int, default=2, help="runs of each tree (default 2)")
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    baseline = worktree(args.baseline, "suite-baseline-")
    (baseline.parent / "shared").symlink_to(ROOT.parent / "shared")  # the tests read ../shared beside the tree
    trees = {"baseline": baseline, "this tree": ROOT}
    order = [("baseline", "this tree")[(i // 2 + i) % 2] for i in range(2 * args.rounds)]  # A B B A A B ...
    runs = []
    for i, name in enumerate(order, 1):
        print(f"[{i}/{len(order)}] {name} ...", flush=True)
        runs.append({"tree": name, **run_suite(trees[name])})
        print(f"    {runs[-1]}", flush=True)

    def mean(name, key):
        return statistics.mean(r[key] for r in runs if r["tree"] == name)

    ratios = {key: mean("this tree", key) / mean("baseline", key) for key in ("wall_seconds", "cpu_seconds")}
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True).stdout.strip()
    rows = "\n".join(f"| {i} | {r['tree']} | {r['summary']} | {r['wall_seconds'] / 60:.2f} | {r['cpu_seconds'] / 60:.2f} |"
                     for i, r in enumerate(runs, 1))
    table = (f"`benchmarks/test_suite.py --baseline {args.baseline} --rounds {args.rounds}`: the suite (`python "
             f"{' '.join(PYTEST)}`, as `make test`) of this tree ({head}) and of the baseline, alternately.\n\n"
             "| run | tree | tests | wall (min) | CPU (min) |\n|---|---|---|---|---|\n" + rows + "\n\n"
             f"This tree / baseline, means: wall **{ratios['wall_seconds']:.3f}**, CPU **{ratios['cpu_seconds']:.3f}**.")
    record("test_suite_ab", {"baseline": args.baseline, "tree": head, "rounds": args.rounds, "runs": runs,
                             "ratios": ratios}, table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
