"""Scale-out: the same short training on 1 device, 2 logical devices and 2 local worker processes.

Tolerance: the three runs see the same images in the same global batches of 32, so they
differ only in how per-replica gradients are summed (float rounding). After one epoch on
2,000 images the accuracies on the same 500 test images (about 0.25 on 10 classes) agree within 0.05.
"""

import contextlib
import json
import os
import subprocess
import sys

import pytest

from cifarlab.errors import CifarlabError

ACCURACY_TOLERANCE = 0.05
# The fast loop (quick recipe), 3 epochs of 7 steps of 128 on a 900-image slice, 500 test images: the
# three runs draw the same batches and augmentations; 2 replicas differ from one device only in
# that each replica normalises its half-batch with its own batch-norm statistics, which steers the
# run a little differently (one run here: see docs/scaling.md). Chance is 0.10.
FAST_ACCURACY_TOLERANCE = 0.08


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cifarlab", *args]


def quiet_env() -> dict:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}


def test_one_device_two_devices_two_workers_agree(seed_run, medium_archive, tmp_path):
    # seed_run: 1 epoch of the seed recipe on medium_archive's 2,000 images, seed 0, one device (conftest).
    same = ["--recipe", "seed", "--data", str(medium_archive), "--epochs", "1", "--seed", "0",
            "--no-report", "--quiet"]  # the report is tested elsewhere
    mirrored = subprocess.Popen(cli("train", *same, "--strategy", "mirrored", "--devices", "2",
                                    "--out", str(tmp_path / "mirrored")),
                                env=quiet_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    workers = subprocess.Popen(cli("launch", "--workers", "2", "--", "train", *same, "--out", str(tmp_path / "workers")),
                               env=quiet_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results = {"one device": seed_run.metrics}
    for name, proc in (("2 logical devices", mirrored), ("2 workers", workers)):
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{name}: exit {proc.returncode}\n{err[-3000:]}"
        assert "test accuracy" in out
        run = tmp_path / ("mirrored" if name.startswith("2 logical") else "workers")
        results[name] = json.loads((run / "metrics.json").read_text())
        config = json.loads((run / "config.json").read_text())
        assert config["distribution"] == ("2 local devices (MirroredStrategy)" if name.startswith("2 logical")
                                          else "worker 0 of 2, 2 replicas (MultiWorkerMirroredStrategy)")
        assert not (run / "checkpoint").exists()  # a completed run drops its checkpoint
    assert "[worker 1] worker finished 1 epochs" in out  # the other worker reported through the launcher
    accuracies = {k: m["test_accuracy"] for k, m in results.items()}
    print("test accuracy after 1 epoch:", accuracies)
    assert all(m["epochs"] == 1 for m in results.values())
    assert max(accuracies.values()) - min(accuracies.values()) <= ACCURACY_TOLERANCE, accuracies
    assert min(accuracies.values()) > 0.15, accuracies  # all of them learned something (chance: 0.10)


def test_launch_refuses_bad_usage():
    for args, message in ((["--workers", "2", "--", "evaluate", "run"], "launch runs a training command"),
                          (["--workers", "0", "--", "train"], "--workers must be a positive"),
                          (["--workers", "2"], "launch runs a training command")):
        r = subprocess.run(cli("launch", *args), capture_output=True, text=True, env=quiet_env(), timeout=60)
        assert r.returncode == 2 and message in r.stderr, r.stderr
        assert r.stderr.count("\n") == 1  # one line, no traceback


def test_launch_generates_one_tf_config_per_worker():
    from cifarlab.launch import tf_configs

    configs = tf_configs([4000, 4001, 4002])
    assert [c["task"] for c in configs] == [{"type": "worker", "index": i} for i in range(3)]
    assert all(c["cluster"] == {"worker": ["127.0.0.1:4000", "127.0.0.1:4001", "127.0.0.1:4002"]} for c in configs)


def test_strategy_errors_are_clear(monkeypatch):
    from cifarlab.training import distribute

    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(CifarlabError, match="needs TF_CONFIG"):
        distribute.setup("multiworker")
    with pytest.raises(CifarlabError, match="--strategy must be one of"):
        distribute.setup("parameter-server")
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}')
    with pytest.raises(CifarlabError, match="TF_CONFIG is not a valid cluster"):
        distribute.tf_config()
    placement = distribute.Placement(strategy=None, kind="mirrored", replicas=4)
    with pytest.raises(CifarlabError, match="multiple of 4"):
        placement.check_batch(30)
    placement.check_batch(32)


def test_fast_loop_on_one_device_two_devices_two_workers_agree(small_archive, tmp_path):
    same = ["--recipe", "quick", "--data", str(small_archive), "--epochs", "3", "--batch-size", "128", "--seed", "0",
            "--no-report", "--quiet"]
    runs = {"one device": cli("train", *same, "--strategy", "auto", "--out", str(tmp_path / "one")),
            "2 logical devices": cli("train", *same, "--strategy", "mirrored", "--devices", "2",
                                     "--out", str(tmp_path / "mirrored")),
            "2 workers": cli("launch", "--workers", "2", "--", "train", *same, "--out", str(tmp_path / "workers"))}
    procs = {name: subprocess.Popen(cmd, env=quiet_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, cmd in runs.items()}
    accuracies = {}
    for (name, proc), folder in zip(procs.items(), ("one", "mirrored", "workers")):
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{name}: exit {proc.returncode}\n{err[-3000:]}"
        run = tmp_path / folder
        metrics = json.loads((run / "metrics.json").read_text())
        config = json.loads((run / "config.json").read_text())
        assert config["distribution"] == {"one device": "one device",
                                          "2 logical devices": "2 local devices (MirroredStrategy)",
                                          "2 workers": "worker 0 of 2, 2 replicas (MultiWorkerMirroredStrategy)"}[name]
        assert metrics["epochs"] == 3 and not (run / "checkpoint").exists()
        accuracies[name] = metrics["test_accuracy"]
    assert "[worker 1] worker finished 3 epochs" in out  # the other worker trained too, and wrote nothing
    print("quick recipe, test accuracy after 3 epochs:", accuracies)
    assert max(accuracies.values()) - min(accuracies.values()) <= FAST_ACCURACY_TOLERANCE, accuracies
    assert min(accuracies.values()) > 0.2, accuracies  # all of them learned something (chance: 0.10)


def test_the_fast_loops_distributed_step_on_one_replica_is_the_one_device_step(small_archive):
    """The distributed step's machinery (split, all-reduce, merge call, mirrored updates, summed counts) adds
    nothing: under a one-replica MirroredStrategy it ends with the one-device loop's weights."""

    import keras
    import numpy as np
    import tensorflow as tf

    from cifarlab.data import load_dataset
    from cifarlab.registry import get_model, get_recipe
    from cifarlab.training.distribute import Placement
    from cifarlab.training.fast import FastTrainer

    data = load_dataset(str(small_archive), validate_on="test", limit=600, quiet=True)
    # 4 steps per epoch; the first 2 on 24x24 windows (progressive resizing), the rest on whole images
    recipe = get_recipe("quick").with_overrides(batch_size=128, whiten_init_images=256, crops=((24, 0.25),))
    placement = Placement(tf.distribute.MirroredStrategy(["/cpu:0"]), "mirrored", 1)
    results = []
    for where in (None, placement):
        keras.utils.set_random_seed(0)
        with where.scope() if where else contextlib.nullcontext():
            model = get_model("quick").build(num_classes=10)
        trainer = FastTrainer(model, recipe, data.x_train, data.y_train, seed=0, placement=where)
        results.append((trainer.fit(2, data.x_val, data.y_val).history, [np.asarray(w) for w in model.weights]))
    (h1, w1), (h2, w2) = results
    assert [r["loss"] for r in h1] == pytest.approx([r["loss"] for r in h2], rel=1e-6)
    for a, b, v in zip(w1, w2, model.weights):  # batch-norm statistics and the whitening bias included
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=v.path)
