"""Kernel choices measured on this machine and remembered, as cuDNN's benchmark mode does.

Which of two equivalent kernels is faster depends on the CPU (AMX or not, cache sizes) and on
the library versions, not only on the shapes: a constant tuned on one host is wrong on the next.
:func:`choose` times the candidates once for the shapes in hand and caches the winner in
``$XDG_CACHE_HOME/cifarlab/autotune.json`` (default ``~/.cache/cifarlab``), keyed by a machine
fingerprint (CPU model and features, core count, TensorFlow and cifarlab versions): a different
machine or version measures again, and a corrupt or foreign cache is ignored and rewritten.

``CIFARLAB_AUTOTUNE=0``, or ``cifarlab train --no-autotune`` (:func:`turned_off`), skips all of it:
every choice is its default.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import time
from typing import Callable

from cifarlab.data.download import cache_dir
from cifarlab.errors import CifarlabError
from cifarlab.fileio import write_text

ENV = "CIFARLAB_AUTOTUNE"
VERSION = 1  # of the cache's layout


_off = False  # set for the length of one run by :func:`turned_off`


def enabled() -> bool:
    return not _off and os.environ.get(ENV, "1") != "0"


@contextlib.contextmanager
def turned_off(off: bool = True):
    """Within it (with ``off``), every choice is its default: ``cifarlab train --no-autotune``."""
    global _off
    before, _off = _off, _off or off
    try:
        yield
    finally:
        _off = before


def cache_path():
    return cache_dir() / "autotune.json"


def fingerprint() -> dict:
    """What the measured choices depend on: a change in any of these measures again."""
    import tensorflow as tf

    from cifarlab import __version__

    cpu, flags = platform.processor(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    features = sorted(f for f in flags if f.startswith(("amx", "avx512_bf16", "avx512f", "avx2")))
    return {"cpu": cpu, "features": features, "cores": os.cpu_count(), "tensorflow": tf.__version__,
            "cifarlab": __version__, "layout": VERSION}


def _load(fp: dict) -> dict:
    """The cached choices for this fingerprint; {} for a missing, corrupt or other machine's cache."""
    try:
        saved = json.loads(cache_path().read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(saved, dict) or saved.get("fingerprint") != fp or not isinstance(saved.get("choices"), dict):
        return {}
    return {k: v for k, v in saved["choices"].items() if isinstance(v, dict) and isinstance(v.get("choice"), str)}


def _time(fn: Callable[[], object], reps: int) -> float:
    fn()  # the first call compiles and warms caches
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def choose(key: str, candidates: dict[str, Callable[[], object]], default: str, reps: int = 3) -> str:
    """The name of the fastest of ``candidates`` (zero-argument callables that run the kernel to
    completion) for ``key``, measured the first time this machine meets ``key``; ``default`` when
    autotuning is off. Every candidate must compute the same thing: only their speed differs."""
    if default not in candidates:
        raise ValueError(f"default {default!r} is not one of {sorted(candidates)}")
    if not enabled() or len(candidates) == 1:
        return default
    fp = fingerprint()
    choices = _load(fp)
    if key in choices and choices[key]["choice"] in candidates:
        return choices[key]["choice"]
    seconds = {name: _time(fn, reps) for name, fn in candidates.items()}
    best = min(seconds, key=seconds.get)
    choices = {**_load(fp), key: {"choice": best, "seconds": {k: round(v, 6) for k, v in seconds.items()},
                                  "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z")}}
    try:
        write_text(cache_path(), json.dumps({"fingerprint": fp, "choices": choices}, indent=1) + "\n")
    except CifarlabError:  # a cache that cannot be written costs a measurement next time, nothing more
        pass
    return best
