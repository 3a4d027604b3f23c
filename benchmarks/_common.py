"""Shared by the benchmarks: run a child process and measure it, record figures."""

from __future__ import annotations

import json
import os
import platform
import re
import resource
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from cifarlab.fileio import write_text  # atomic: an interrupted run leaves the old file, never half a new one

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SHARED_ARCHIVE = ROOT.parent / "shared" / "data" / "cifar10-jpeg-binary.tar.gz"


def machine() -> str:
    """The CPU as figures need it: "AMD EPYC" names chips of very different speed, so the family/model
    and the instruction sets that decide the kernels (bf16, AMX, AVX-512) come with it."""
    info = {}
    try:
        for line in open("/proc/cpuinfo"):
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    flags = set(info.get("flags", "").split())
    isa = [f for f in ("amx_bf16", "avx512_bf16", "avx512f", "avx2") if f in flags] or ["no AVX2"]
    cpu = info.get("model name", "unknown CPU")
    if "cpu family" in info:
        cpu += f" (family {info['cpu family']} model {info.get('model', '?')}; {', '.join(isa)})"
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def run_measured(cmd: list[str], env: dict | None = None, timeout: float = 3600) -> dict:
    """Run ``cmd`` with ``env`` over this process's environment (a ``None`` value removes that variable);
    return wall seconds, CPU seconds (user + system of the child and every process it waited for), exit
    code, output and the child's peak RSS (MiB)."""
    env = {k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # wait4 was done by communicate(); ru_maxrss of a single child needs os.wait4, so
    # children report their own peak via a last JSON line when they can.
    peak = None
    m = re.search(r"^PEAK_RSS_MIB=([\d.]+)$", err or "", re.M)
    if m:
        peak = float(m.group(1))
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_seconds": round(wall, 2), "cpu_seconds": round(cpu, 2), "returncode": proc.returncode,
            "stdout": out, "stderr": err, "peak_rss_mib": peak}


def worktree(ref: str, prefix: str) -> Path:
    """A detached git worktree of ``ref`` in a new temporary folder named ``prefix...`` (removed at exit):
    the baseline tree a benchmark runs beside this one."""
    import atexit
    import tempfile

    path = Path(tempfile.mkdtemp(prefix=prefix)) / "tree"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--quiet", str(path), ref], check=True)
    atexit.register(subprocess.run, ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)])
    return path


def record(name: str, figures: dict, table: str) -> Path:
    """Write ``results/NAME.json`` and replace the ``## NAME`` section of RESULTS.md."""
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    figures = {"benchmark": name, "date": stamp, "machine": machine(), "python": sys.version.split()[0], **figures}
    out = HERE / "results" / f"{name}.json"
    out.parent.mkdir(exist_ok=True)
    write_text(out, json.dumps(figures, indent=2) + "\n")
    md = HERE / "RESULTS.md"
    text = md.read_text() if md.exists() else "# Benchmark results\n\nEach section is rewritten by its benchmark.\n"
    section = f"## {name}\n\n{stamp}; {figures['machine']}.\n\n{table.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(name)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(section + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    write_text(md, text)
    return out


PEAK_SNIPPET = (
    "import atexit, resource, sys\n"
    "atexit.register(lambda: print(f'PEAK_RSS_MIB={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f}',"
    " file=sys.stderr))\n"
)
