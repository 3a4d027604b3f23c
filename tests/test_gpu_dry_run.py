"""The GPU side-by-side benchmark (issue 18) runs end to end on the CPU, so it is known to work
before a GPU is lent: the same script, a small slice, one run, the JAX backend.

100 training images: the recipe's batch shrinks to the slice (one step an epoch), and the warm-up,
the timed run and the step anatomy's 16 steps each cost a fifth of what batches of 500 cost on a
2-core CPU; the script's path is the same whatever the size."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACK = ROOT.parent / "shared" / "data" / "cifar10-jpeg-pack.npz"


def test_gpu_side_by_side_dry_run_on_cpu(tmp_path):
    pytest.importorskip("jax")
    if not PACK.is_file():
        pytest.skip(f"JPEG pack not found at {PACK}")
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_side_by_side.py"), "--dry-run", "--no-peer",
                        "--recipe", "quick", "--limit", "100", "--backends", "jax", "--pack", str(PACK),
                        "--out", str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:] + p.stdout[-2000:]
    res = json.loads((tmp_path / "gpu_side_by_side.json").read_text())
    (c,) = res["cifarlab"]
    assert c["backend"] == "jax" and c["train_images"] == 100 and c["test_images"] == 20
    assert len(c["runs"]) == 1 and 0 <= c["tta_accuracy_mean"] <= 1 and c["seconds_mean"] > 0
    assert c["bf16_matmul_peak_tflops"] > 0 and isinstance(c["step_anatomy"], dict)
    assert "cifarlab quick, jax" in res["table"]
