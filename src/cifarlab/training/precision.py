"""Numeric precision: which dtype the layers compute in.

``auto`` picks bfloat16 where the hardware runs it natively (x86 CPUs with AMX or
AVX512-BF16; NVIDIA GPUs of compute capability 8.0 or newer) and float32
elsewhere. Under every mixed policy Keras keeps variables in float32, and the
models here keep their softmax and the loss in float32.
"""

from __future__ import annotations

from cifarlab.errors import CifarlabError
from cifarlab.recipes import PRECISIONS as CHOICES

# On a CPU with bf16 instructions, whether bf16 trains faster than fp32 on each backend
# (measured on the quick recipe: benchmarks/RESULTS.md, "backends_precision").
CPU_BF16_PAYS = {"tensorflow": True, "jax": False, "torch": False}
POLICIES = {"bf16": "mixed_bfloat16", "fp16": "mixed_float16", "fp32": "float32"}


def cpu_has_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("amx_bf16", "avx512_bf16"))


def gpu_has_bf16() -> bool:
    """True when a GPU of the current backend has compute capability 8.0 or newer (Ampere, Hopper)."""
    from cifarlab.backend import gpu_capabilities

    return any(cc >= (8, 0) for cc in gpu_capabilities())


def has_gpu() -> bool:
    from cifarlab.backend import gpu_capabilities

    return bool(gpu_capabilities())


def resolve(precision: str) -> str:
    """Turn a ``--precision`` choice into ``"bf16"``, ``"fp16"`` or ``"fp32"``."""
    if precision not in CHOICES:
        raise CifarlabError(f"--precision must be one of {', '.join(CHOICES)}, not {precision!r}")
    if precision != "auto":
        return precision
    if has_gpu():
        return "bf16" if gpu_has_bf16() else "fp32"
    from cifarlab.backend import current

    if not CPU_BF16_PAYS[current()]:
        return "fp32"
    return "bf16" if cpu_has_bf16() else "fp32"


def apply(precision: str) -> None:
    """Set Keras' global dtype policy for models built from now on."""
    import keras

    keras.mixed_precision.set_dtype_policy(POLICIES[precision])
