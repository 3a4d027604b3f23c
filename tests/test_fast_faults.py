"""Faults in the fast loop (fast/quick recipes): kill -9, SIGTERM, an exact mid-epoch resume. Real training."""

import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess

import numpy as np
import pandas as pd
import pytest

from cifarlab.training import checkpoint
from test_faults import cli, quiet_env, sigterm_after_first_epoch, state, wait_for


def quick(archive, out, epochs=3) -> list[str]:
    # 600 images (500 test): 540 to train on, 5 steps of 100 per epoch. (The recipe's batches of 500 cost
    # about 2.8 s a step on 2 cores; these tests are about epochs and checkpoints, not the batch.)
    return ["--recipe", "quick", "--data", str(archive), "--limit", "600", "--batch-size", "100", "--epochs",
            str(epochs), "--seed", "0", "--out", str(out), "--no-report", "--quiet"]


def test_sigterm_finishes_the_step_checkpoints_and_exits_143(small_archive, tmp_path):
    out = tmp_path / "run"
    sigterm_after_first_epoch(cli("train", *quick(small_archive, out)), out)
    saved = state(out)
    assert saved["trainer"] == "fast" and saved["epoch"] >= 1 and not (out / "metrics.json").exists()
    assert len(checkpoint.read_arrays(out)) > 0  # the momentum buffers travel with the weights
    assert (out / "config.json").is_file()  # kept: the same command resumes it


class StopAfter:
    """Stands in for an active StopRequest: 'SIGTERM' arrives once ``n`` steps have been checked."""

    signum, name = signal.SIGTERM, "SIGTERM"

    def __init__(self, n: int):
        self.n = n

    @property
    def requested(self) -> bool:
        self.n -= 1
        return self.n < 0


@pytest.fixture(scope="module")
def data(small_archive):
    from cifarlab.data import load_dataset

    return load_dataset(str(small_archive), validate_on="test", limit=600, quiet=True)  # 500 test images


def make_trainer(data):
    import keras

    from cifarlab.registry import get_model, get_recipe
    from cifarlab.training.fast import FastTrainer

    recipe = get_recipe("quick").with_overrides(batch_size=128, whiten_init_images=256)  # 4 steps per epoch
    keras.utils.set_random_seed(0)
    return FastTrainer(get_model("quick").build(num_classes=10), recipe, data.x_train, data.y_train, seed=0)


def test_a_signal_mid_epoch_resumes_at_the_very_next_step(data, tmp_path):
    """Interrupted after step 2 of epoch 2 and resumed in a fresh trainer: the same weights as one straight run."""
    from cifarlab.training.signals import Interrupted

    def trainer():
        return make_trainer(data)

    straight = trainer()
    expected = straight.fit(3, data.x_val, data.y_val)

    first = trainer()
    with pytest.raises(Interrupted, match="stopped by SIGTERM at epoch 2, step 2") as stopped:
        # Checked after each of epoch 1's 4 steps and at its end, then after epoch 2's step 1: stop after step 2.
        first.fit(3, data.x_val, data.y_val, run_dir=tmp_path, stop=StopAfter(5 + 1))
    assert stopped.value.exit_code == 143
    assert state(tmp_path)["epoch"] == 1 and state(tmp_path)["step"] == 2

    resumed = trainer()
    got = resumed.fit(3, data.x_val, data.y_val, run_dir=tmp_path)
    assert [r["epoch"] for r in got.history] == [1, 2, 3] and got.steps == 12
    assert got.images == 6 * 128  # trained here: epoch 2 from its step 3, and epoch 3
    for a, b in zip(straight.model.weights, resumed.model.weights):  # batch-norm statistics included
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6, err_msg=a.path)
    np.testing.assert_allclose([r["loss"] for r in got.history], [r["loss"] for r in expected.history], rtol=1e-5)


def test_a_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(data, tmp_path):
    from cifarlab.training.checkpoint import NonFiniteLoss

    trainer = make_trainer(data)
    # The classifier: a NaN there reaches the loss whatever the activation (ReLU maps a NaN input to 0).
    kernel = next(v for v in trainer.vars if v.path == "head/kernel")

    def break_the_weights(row):  # after epoch 1 and its checkpoint: epoch 2 trains on NaN weights
        kernel.assign(np.full(kernel.shape, np.nan, np.float32))

    with pytest.raises(NonFiniteLoss, match=r"the loss became nan at epoch 2.*last good checkpoint \(after epoch 1\)"):
        trainer.fit(3, data.x_val, data.y_val, run_dir=tmp_path, on_epoch=break_the_weights)
    saved = state(tmp_path)
    assert saved["epoch"] == 1 and saved["step"] == 0 and len(saved["history"]) == 1
    resumed = make_trainer(data)
    checkpoint.load_weights(tmp_path, resumed.model)
    assert all(np.isfinite(np.asarray(w)).all() for w in resumed.model.weights)


def sliced(archive, out, epochs=2, every=2) -> list[str]:
    # 1,000 images (500 test): 900 to train on, 14 steps of 64 per epoch, a checkpoint every `every` steps.
    return ["--recipe", "quick", "--data", str(archive), "--epochs", str(epochs), "--batch-size", "64",
            "--seed", "0", "--checkpoint-every", str(every), "--out", str(out), "--no-report", "--quiet"]


def test_kill_9_after_a_mid_epoch_checkpoint_resumes_at_the_next_step(small_archive, tmp_path):
    straight_out, out = tmp_path / "straight", tmp_path / "run"
    straight = subprocess.Popen(cli("train", *sliced(small_archive, straight_out)), env=quiet_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    cmd = cli("train", *sliced(small_archive, out))
    proc = subprocess.Popen(cmd, env=quiet_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Steps 2, 4 or 6 of epoch 2: the epoch's end (step 14) is far off when the kill lands.
    wait_for(proc, out, lambda s: s["epoch"] == 1 and 0 < s["step"] <= 6, "a mid-epoch checkpoint in epoch 2")
    proc.kill()  # SIGKILL: no handler, no clean-up
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    saved = state(out)
    assert saved["epoch"] == 1 and saved["step"] in (2, 4, 6, 8) and saved["exact_step"]
    assert len(saved["history"]) == 1 and not (out / "metrics.json").exists()

    again = subprocess.run(cmd, env=quiet_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming from the checkpoint epoch 2, step {saved['step']}\n" in again.stderr  # not "starts over"
    history = pd.read_csv(out / "history.csv")
    assert history["epoch"].tolist() == [1, 2]
    assert history[["loss", "accuracy", "val_loss", "val_accuracy"]].notna().all().all()
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 2
    assert not (out / "checkpoint").exists()
    # Each image seen once per epoch, in the same order as an unbroken run: the same epoch-2 loss and
    # accuracy (a replay of the epoch's first steps would change both).
    _, err = straight.communicate(timeout=300)
    assert straight.returncode == 0, err[-3000:]
    expected = pd.read_csv(straight_out / "history.csv")
    np.testing.assert_allclose(history[["loss", "accuracy"]], expected[["loss", "accuracy"]], rtol=1e-3)


@contextlib.contextmanager
def tmpfs(where, size: int):
    """A real size-limited file system mounted on ``where`` (root with mount rights); None where it cannot be."""
    where.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        yield None
        return
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    if r.returncode != 0:  # e.g. a container without CAP_SYS_ADMIN
        yield None
        return
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def resize(mount, size: int) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(mount)], check=True)


def used_bytes(mount) -> int:
    st = os.statvfs(mount)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def limit_file_size(limit: int):
    def preexec():  # in the child: writes past `limit` fail with EFBIG instead of killing it
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return preexec


def test_a_full_disk_keeps_the_previous_checkpoint_and_the_rerun_resumes(small_archive, tmp_path):
    """A real full file system: a tmpfs shrunk under a running training; without mount rights, a per-file
    size limit (RLIMIT_FSIZE) on the process instead. Either way the write fails in the OS, not in a mock."""
    from cifarlab.registry import get_model

    out = tmp_path / "disk" / "run"
    cmd = cli("train", *sliced(small_archive, out, epochs=3, every=0))
    with tmpfs(tmp_path / "disk", 256 << 20) as disk:
        proc = subprocess.Popen(cmd, env=quiet_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(proc, out, lambda s: s["epoch"] >= 1, "the first epoch's checkpoint")
        size = checkpoint.path(out).stat().st_size
        if disk is not None:
            resize(disk, used_bytes(disk) + size // 2)  # the disk fills up: no room for the next checkpoint
            _, err = proc.communicate(timeout=300)
            code, why = proc.returncode, "No space left on device"
        else:  # stop it with a checkpoint, then run the same command again unable to write a whole one
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=120)
            r = subprocess.run(cmd, env=quiet_env(), capture_output=True, text=True, timeout=300,
                               preexec_fn=limit_file_size(size // 2))
            code, err, why = r.returncode, r.stderr, "File too large"
        kept = state(out)
        assert code == 2 and "Traceback" not in err, err[-3000:]
        last = err.strip().splitlines()[-1]
        assert last.startswith(f"cifarlab: error: cannot write checkpoint {checkpoint.path(out)}: ") and why in last
        assert f"the previous checkpoint ({checkpoint.where(kept)}) is intact" in last and f"--out {out}" in last
        # The previous checkpoint is whole and loads; nothing half-written lies beside it; no finished-looking run.
        assert os.listdir(out / "checkpoint") == [checkpoint.FILE]
        assert kept["epoch"] >= 1 and len(kept["history"]) == kept["epoch"]
        checkpoint.load_weights(out, get_model("quick").build(num_classes=10))
        assert len(checkpoint.read_arrays(out)) > 0
        assert not (out / "metrics.json").exists() and not (out / "model.keras").exists()

        if disk is not None:
            resize(disk, 256 << 20)  # space freed
        again = subprocess.run(cmd, env=quiet_env(), capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stderr[-3000:]
        assert f"resuming from the checkpoint {checkpoint.where(kept)}" in again.stderr
        history = pd.read_csv(out / "history.csv")
        assert history["epoch"].tolist() == [1, 2, 3]
        assert history[["loss", "accuracy", "val_loss", "val_accuracy"]].notna().all().all()
        # The epochs done before the failure were not trained again: their rows are the checkpoint's.
        np.testing.assert_allclose(history["loss"][:kept["epoch"]], [r["loss"] for r in kept["history"]])
        assert json.loads((out / "metrics.json").read_text())["epochs"] == 3
        assert not (out / "checkpoint").exists()
