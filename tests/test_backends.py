"""Every Keras backend: the fast recipes train on JAX and PyTorch (the portable loop), without TensorFlow
installed, resume after ``kill -9``, and their models move between backends.

Each backend runs in a subprocess of its own (Keras fixes its backend at import). Tiny: ``quick`` on
450 real training images, batches of 100 (4 steps an epoch).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

# Importing TensorFlow fails in the child, as where it is not installed (a finder that refuses it,
# so that "tensorflow" never even appears in sys.modules).
NO_TENSORFLOW = '''
import sys
class _NoTensorFlow:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "tensorboard"):
            raise ModuleNotFoundError(f"No module named {name!r}")
sys.meta_path.insert(0, _NoTensorFlow())
'''
TINY = ["--recipe", "quick", "--batch-size", "100", "--epochs", "2", "--seed", "0", "--quiet", "--no-report"]


def _env(backend: str, user_cache: Path | None = None, **extra) -> dict:
    """The child's environment; with ``user_cache``, that is its cache folder (``XDG_CACHE_HOME``) and the
    command line keeps JAX's compiled programs there itself, instead of in the suite's shared JAX cache."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2",
           **extra}
    if backend == "torch":  # beside the other pytest worker's processes, PyTorch's second thread mostly waits
        env.setdefault("OMP_NUM_THREADS", "1")
    if user_cache is not None:
        env.pop("JAX_COMPILATION_CACHE_DIR", None)
        env["XDG_CACHE_HOME"] = str(user_cache)
    return env


def _compiled(user_cache: Path) -> set[str]:
    """The programs the command line kept in ``user_cache`` (cifarlab's JAX compilation cache)."""
    return {p.name for p in (user_cache / "cifarlab" / "jax").glob("*-cache*")}


def _python(code: str, backend: str, *args, timeout: float = 600, user_cache: Path | None = None
            ) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], env=_env(backend, user_cache),
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _losses(run: Path) -> list[float]:
    """The training loss of each epoch, from the run directory's history.csv."""
    with open(run / "history.csv", newline="") as f:
        return [float(row["loss"]) for row in csv.DictReader(f)]


def _assert_agree(ref: Path, got: Path) -> None:
    """Two .npy files of probabilities for the same 1,000 test images: >= 99.9 % top-1 agreement and every
    probability within 1e-3."""
    ref, got = np.load(ref), np.load(got)
    assert ref.shape == got.shape == (1000, 10)
    assert np.mean(ref.argmax(1) == got.argmax(1)) >= 0.999
    assert np.abs(ref - got).max() <= 1e-3


PREDICT = '''
import sys, numpy as np
from cifarlab.data import load_dataset
from cifarlab.inference.predict import predict_arrays
from cifarlab.models.io import load_model
model, _ = load_model(sys.argv[1])
x = load_dataset(sys.argv[2], validate_on="test", quiet=True).x_test[:1000]
np.save(sys.argv[3], predict_arrays(model, x))
'''


@pytest.fixture(scope="module")
def archive(shared_archive, tmp_path_factory) -> Path:
    """450 training, 50 hold-out and 1,000 test images of the shared copy."""
    from slices import slice_archive

    return slice_archive(shared_archive, tmp_path_factory.mktemp("backends") / "slice.tar.gz", 500, 1000)


@pytest.fixture(scope="module")
def jax_run(archive, tmp_path_factory) -> dict:
    """Every command on JAX in one process where TensorFlow cannot be imported; returns what each gave."""
    work = tmp_path_factory.mktemp("jax")
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(work / "cat.png")
    run = work / "run"
    code = NO_TENSORFLOW + f'''
import contextlib, io, json, sys
from cifarlab.cli import main
codes = {{}}
for name, argv in [("info", ["info", "--data", {str(archive)!r}]), ("summary", ["summary", "quick"]),
                   ("train", ["train", "--data", {str(archive)!r}, "--out", {str(run)!r}, *{TINY!r}]),
                   ("evaluate", ["evaluate", {str(run)!r}, "--json"]),
                   ("predict", ["predict", {str(run)!r}, {str(work / "cat.png")!r}, "--json"]),
                   ("predict_csv", ["predict", {str(run)!r}, {str(work)!r}, "--out", {str(work / "p.csv")!r}]),
                   ("report", ["report", {str(run)!r}]),
                   ("export", ["export", {str(run)!r}, "--format", "onnx", "-o", {str(work / "m.onnx")!r}]),
                   ("mirrored", ["train", "--strategy", "mirrored", "--data", {str(archive)!r}])]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        codes[name] = [main(["--backend", "jax", *argv]), err.getvalue()]
codes["tensorflow_imported"] = "tensorflow" in sys.modules
print("RESULT=" + json.dumps(codes))
'''
    proc = _python(code, "jax", user_cache=work / "cache")
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT="))
    return {"run": run, "work": work, "codes": json.loads(line[len("RESULT="):]), "stdout": proc.stdout,
            "cache": work / "cache", "compiled": _compiled(work / "cache")}


def test_every_command_runs_on_jax_without_tensorflow(jax_run):
    codes = jax_run["codes"]
    assert not codes.pop("tensorflow_imported")
    for name in ("info", "summary", "train", "evaluate", "predict", "predict_csv", "report"):
        assert codes[name][0] == 0, (name, codes[name][1][-2000:])
    # TensorFlow-only features: one line, exit status 2
    for name in ("export", "mirrored"):
        status, err = codes[name]
        assert status == 2 and err.startswith("cifarlab: error:") and "TensorFlow" in err and len(err.splitlines()) == 1
    run = jax_run["run"]
    config = json.loads((run / "config.json").read_text())
    assert config["environment"]["backend"] == "jax" and config["precision"] == "fp32"
    losses = _losses(run)
    assert losses[1] < losses[0]  # it learns
    assert (run / "report.html").is_file() and (run / "test_predictions.npz").is_file()
    assert jax_run["compiled"]  # XLA's programs, kept in the user's cache folder for the next command


@pytest.mark.parametrize("backend", ["tensorflow", "torch"])
def test_a_jax_model_predicts_the_same_on_other_backends(jax_run, archive, backend):
    """Loaded on another backend, the JAX-trained fp32 model gives the same classes on 1,000 test images
    (>= 99.9 % top-1 agreement) and probabilities within 1e-3."""
    work = jax_run["work"]
    if not (work / "jax.npy").exists():
        _python(PREDICT, "jax", jax_run["run"], archive, work / "jax.npy")
    _python(PREDICT, backend, jax_run["run"], archive, work / f"{backend}.npy")
    _assert_agree(work / "jax.npy", work / f"{backend}.npy")


def test_a_jax_run_reports_exports_and_serves_on_tensorflow(jax_run, tmp_path, capsys):
    """The JAX-trained run, on this process's backend (TensorFlow): its report renders, its ONNX export
    passes the export's own check (the model on TensorFlow against the export's runtime), and a real server
    on 127.0.0.1 answers for the picture as ``cifarlab predict`` answered on JAX."""
    import shutil

    from servers import Server

    from cifarlab.cli import main

    run = tmp_path / "run"
    shutil.copytree(jax_run["run"], run)
    (run / "report.html").unlink()
    assert main(["report", str(run)]) == 0
    assert (run / "report.html").stat().st_size > 10_000
    capsys.readouterr()
    assert main(["export", str(run), "--format", "onnx", "-o", str(tmp_path / "m.onnx"), "--json"]) == 0
    check = json.loads(capsys.readouterr().out)
    assert check["top1_agreement"] >= 0.999 and check["max_abs_prob_diff"] <= 1e-3

    on_jax = next(json.loads(ln) for ln in jax_run["stdout"].splitlines() if ln.startswith('{"file"'))
    server = Server(run, log=tmp_path / "serve.log")
    try:
        got = server.session.post(server.url + "/predict", data=(jax_run["work"] / "cat.png").read_bytes()).json()
    finally:
        server.stop()
    assert got["class"] == on_jax["top"][0]["class"]
    for want, t in zip(on_jax["top"], got["top"]):
        assert t["class"] == want["class"] and abs(t["probability"] - want["probability"]) <= 1e-3


TRAIN = '''
import json, sys
import numpy as np
from cifarlab.data import load_dataset
from cifarlab.models.io import save_model
from cifarlab.registry import get_model, get_recipe
from cifarlab.training.portable import PortableTrainer
data = load_dataset(sys.argv[1], quiet=True, seed=0)
recipe = get_recipe("quick").with_overrides(batch_size=100)
model = get_model("quick").build(num_classes=10)
trainer = PortableTrainer(model, recipe, data.x_train, data.y_train, seed=0)
result = trainer.fit(2)
save_model(model, sys.argv[2], {"class_names": data.class_names})
np.save(sys.argv[3], trainer.predict(data.x_test[:1000]))
print("LOSSES=" + json.dumps([row["loss"] for row in result.history]))
'''


def _same_on_jax(model: Path, archive: Path, trained: Path, tmp_path: Path) -> None:
    """``model`` predicts on JAX the 1,000 test images as ``trained`` (.npy) says it did where it was trained."""
    _python(PREDICT, "jax", model, archive, tmp_path / "jax.npy")
    _assert_agree(trained, tmp_path / "jax.npy")


def test_portable_loop_on_tensorflow_learns_and_its_model_loads_on_jax(archive, tmp_path):
    """The portable loop on TensorFlow (whose command line trains by the fast loop instead): 8 steps of
    quick, the loss falls; the model it saves predicts on JAX what it predicted where it was trained."""
    proc = _python(TRAIN, "tensorflow", archive, tmp_path / "m.keras", tmp_path / "trained.npy")
    losses = json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith("LOSSES="))[7:])
    assert losses[1] < losses[0]
    _same_on_jax(tmp_path / "m.keras", archive, tmp_path / "trained.npy", tmp_path)


@pytest.fixture(scope="module")
def torch_run(archive, tmp_path_factory) -> dict:
    """``cifarlab train`` on PyTorch (the portable loop), then that model's probabilities for the first
    1,000 test images, in the same process."""
    work = tmp_path_factory.mktemp("torch")
    train = f'''
import sys
from cifarlab.cli import main
assert main(["--backend", "torch", "train", "--out", sys.argv[1], "--data", sys.argv[2], *{TINY!r}]) == 0
'''
    _python(train + PREDICT, "torch", work / "run", archive, work / "trained.npy")
    return {"run": work / "run", "trained": work / "trained.npy"}


def test_a_torch_run_learns_and_its_model_loads_on_jax(torch_run, archive, tmp_path):
    """The portable loop on PyTorch: 8 steps of quick, the loss falls; the model predicts on JAX what it
    predicted on PyTorch."""
    losses = _losses(torch_run["run"])
    assert losses[1] < losses[0]
    config = json.loads((torch_run["run"] / "config.json").read_text())
    assert config["environment"]["backend"] == "torch"
    _same_on_jax(torch_run["run"], archive, torch_run["trained"], tmp_path)


def _kill_9_then_resume(cmd: list[str], env: dict, out: Path) -> dict:
    """Run ``cmd``, ``kill -9`` it once its first checkpoint exists, run it again; returns the state it
    was killed at, after checking that the second run resumed from it and finished."""
    from cifarlab.training import checkpoint

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not checkpoint.path(out).exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before its first checkpoint"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    saved = checkpoint.read_state(out)
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming from the checkpoint {checkpoint.where(saved)}" in again.stderr
    return saved


def _same_ending(resumed_run: Path, straight_run: Path) -> None:
    resumed = json.loads((resumed_run / "metrics.json").read_text())
    straight = json.loads((straight_run / "metrics.json").read_text())
    for key in ("test_accuracy", "test_loss", "tta_test_accuracy", "confusion_matrix"):
        assert resumed[key] == straight[key], key


def _train_command(backend: str, archive: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "cifarlab", "--backend", backend, "train", "--data", str(archive),
            "--out", str(out), *extra, *TINY]


def test_jax_resumes_after_kill_9_at_the_next_step(jax_run, archive, tmp_path):
    """Killed mid-epoch, the same command resumes from the checkpoint's step and ends exactly where an
    uninterrupted run (jax_run's, same flags) ends. Both processes find jax_run's compiled programs in the
    user's cache folder and compile none of them again."""
    out = tmp_path / "run"
    cmd = _train_command("jax", archive, out, "--checkpoint-every", "1")
    saved = _kill_9_then_resume(cmd, _env("jax", user_cache=jax_run["cache"]), out)
    assert saved["trainer"] == "portable" and saved["backend"] == "jax"
    _same_ending(out, jax_run["run"])
    assert _compiled(jax_run["cache"]) == jax_run["compiled"]  # every program came from the cache


def test_torch_resumes_after_kill_9_at_the_next_step(torch_run, archive, tmp_path):
    """The same on PyTorch: killed mid-epoch, resumed by the same command, it ends where an uninterrupted
    PyTorch run with the same flags (torch_run's) ends."""
    out = tmp_path / "run"
    saved = _kill_9_then_resume(_train_command("torch", archive, out, "--checkpoint-every", "1"), _env("torch"), out)
    assert saved["trainer"] == "portable" and saved["backend"] == "torch"
    _same_ending(out, torch_run["run"])


def test_muon_optimizer_matches_the_tensorflow_loops_update():
    """The Keras optimizer's step equals FastTrainer's hand-written one (Muon on a conv kernel, Nesterov
    SGD with weight decay on a bias and a dense kernel), over three steps on fixed tensors."""
    import types

    import keras
    import tensorflow as tf

    from cifarlab.registry import get_recipe
    from cifarlab.training.fast import FastTrainer
    from cifarlab.training.muon import from_recipe

    recipe = get_recipe("quick")
    o = recipe.options
    rng = np.random.default_rng(0)
    shapes = [(3, 3, 4, 8), (8,), (8, 10)]
    init = [rng.normal(size=s).astype(np.float32) for s in shapes]
    grads = [[rng.normal(size=s).astype(np.float32) for s in shapes] for _ in range(3)]
    lr = recipe.learning_rate  # step 0 of a long run: the schedule's factor is 1 at the start

    fake = types.SimpleNamespace(recipe=recipe, is_muon=[True, False, False],
                                 lr_mult=[1.0, recipe.options.bias_lr_scale, 1.0],
                                 wd=[o.weight_decay, o.weight_decay / o.bias_lr_scale, o.weight_decay])
    fake._muon_update = lambda *a: FastTrainer._muon_update(fake, *a)
    ref = [tf.Variable(a) for a in init]
    bufs = [tf.Variable(tf.zeros(s)) for s in shapes]
    for g in grads:
        for k in range(3):
            FastTrainer._update_var(fake, k, ref[k], tf.constant(g[k]), bufs[k], tf.constant(lr, tf.float32))

    variables = [keras.Variable(a) for a in init]
    opt = from_recipe(recipe, total_steps=10**9)
    opt.build(variables)
    for g in grads:
        opt.apply([keras.ops.convert_to_tensor(x) for x in g], variables)
    for r, v in zip(ref, variables):
        np.testing.assert_allclose(np.asarray(v.value), r.numpy(), rtol=1e-5, atol=1e-5)


DATA_PARALLEL = '''
import json, sys
import keras, numpy as np
from cifarlab.registry import get_model, get_recipe
from cifarlab.training import distribute
from cifarlab.training.portable import PortableTrainer
rng = np.random.default_rng(0)
x, y = rng.integers(0, 256, (400, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 400)
recipe = get_recipe("quick").with_overrides(batch_size=100)
out = {}
for devices in (1, 2):
    placement = distribute.setup("dataparallel" if devices > 1 else "auto", devices)
    keras.utils.set_random_seed(0)
    with placement.scope():
        model = get_model("quick").build(num_classes=10)
    trainer = PortableTrainer(model, recipe, x, y, seed=0, placement=placement)
    loss = trainer.fit(1).history[0]["loss"]
    out[devices] = [placement.kind, len(trainer.state[0][0].sharding.device_set), loss,
                    trainer.predict(x[:100]).tolist()]
print("RESULT=" + json.dumps(out))
'''


def test_jax_data_parallel_over_two_cpu_devices_trains_as_one_device():
    """keras.distribution.DataParallel on 2 logical CPU devices: weights replicated on both, each step's
    batch split between them; 4 steps end where one device ends, up to float rounding."""
    proc = subprocess.run([sys.executable, "-c", DATA_PARALLEL], capture_output=True, text=True, timeout=600,
                          env=_env("jax", XLA_FLAGS="--xla_force_host_platform_device_count=2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT="))[7:])
    one, two = out["1"], out["2"]
    assert one[:2] == ["default", 1] and two[:2] == ["dataparallel", 2]
    assert abs(one[2] - two[2]) < 1e-2
    assert np.abs(np.array(one[3]) - np.array(two[3])).max() < 0.05


def test_backend_flag_mistakes_are_one_line_errors(capsys):
    import keras

    from cifarlab.cli import main

    assert main(["--backend", "mxnet", "list"]) == 2
    assert "invalid choice" in capsys.readouterr().err
    other = "jax" if keras.backend.backend() != "jax" else "torch"  # this process's Keras is already imported
    assert main(["list", "--backend", other]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cifarlab: error: Keras already runs on") and len(err.splitlines()) == 1
