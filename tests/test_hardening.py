"""Hostile inputs (issue 16): crafted pickles, archive bombs, bad model metadata, bad configs and checkpoints.

Every hostile file here is real: a pickle inside a real .tar.gz, a gzip bomb that is small on
disk and large when decompressed, a real .keras zip with a rewritten cifarlab.json. Each must
end in one line ``cifarlab: error: ...``, exit status 2, bounded memory and nothing written.
``HOSTILE`` counts them (issue 16's "bad inputs" figure).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import resource
import subprocess
import sys
import tarfile
import zipfile

import numpy as np
import pytest

import builders
from cifarlab.data.cifar import MAX_ENTRIES
from cifarlab.errors import CifarlabError

MEMORY_LIMIT = 3 << 30  # address space of a CLI process reading a hostile file
RSS_BUDGET_MB = 250  # a refused file costs no more than the interpreter and numpy
HOSTILE: list[str] = []  # every hostile input thrown, by name


def cli(*args) -> list[str]:
    return [sys.executable, "-m", "cifarlab", *map(str, args)]


# Reads each file named on its command line with `cifarlab info --data FILE`, in one process (one start-up):
# a JSON line [exit status, stdout, stderr] per file, then the process's peak resident memory in MB
# (VmHWM: ru_maxrss would include the memory of the test process it was forked from).
INFO_EACH = """
import contextlib, io, json, re, sys
from cifarlab.cli import main
for path in sys.argv[1:]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["info", "--data", path])
    print(json.dumps([rc, out.getvalue(), err.getvalue()]), flush=True)
print(int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) / 1024)
"""


def run_limited(argv: list[str], timeout: float = 120.0):
    """Run ``argv`` under an address-space limit (and a time limit); (exit code, stdout, stderr)."""
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    p = subprocess.run(argv, capture_output=True, text=True, env=env, preexec_fn=limit, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def assert_one_line(rc, out, err, pattern):
    import re

    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("cifarlab: error: "), (rc, err[-2000:])
    assert re.search(pattern, lines[0]), lines[0]
    assert out == ""


def tree(path) -> dict:
    """Every file under ``path`` with its bytes: to prove nothing was written, moved or deleted."""
    return {str(p.relative_to(path)): (p.read_bytes() if p.is_file() else None) for p in sorted(path.rglob("*"))}


# -- data: pickles and archives --------------------------------------------------------------------------

class Reduce:
    """Pickles as ``func(*args)``: how a crafted pickle calls an allowed global with chosen arguments."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def python_release(batch: bytes | None = None, meta: bytes | None = None) -> dict[str, bytes]:
    """A tiny cifar-10-batches-py release with data_batch_1 (and optionally the meta file) replaced."""
    files, _ = builders.cifar10_binary_files(n_per_batch=2, n_test=2)
    out = {}
    for k, v in files.items():
        if k.endswith(".bin"):
            a = np.frombuffer(v, np.uint8).reshape(-1, 3073)
            v = pickle.dumps({b"labels": a[:, 0].tolist(), b"data": a[:, 1:].copy()}, protocol=2)
        else:
            v = pickle.dumps({b"label_names": [n.encode() for n in builders.CIFAR10_NAMES]}, protocol=2)
        out[k.replace("cifar-10-batches-bin", "cifar-10-batches-py").removesuffix(".bin").removesuffix(".txt")] = v
    if batch is not None:
        out["cifar-10-batches-py/data_batch_1"] = batch
    if meta is not None:
        out["cifar-10-batches-py/batches.meta"] = meta
    return out


def hostile_pickles() -> dict[str, bytes]:
    from numpy._core.multiarray import _reconstruct

    n = 1 << 28  # 2**28 images of 3,072 bytes: 825 GB as an array
    zero_stride = Reduce(np.ndarray, (n, 3072), np.dtype("u1"), b"\0", 0, (0, 0))
    labels = Reduce(np.ndarray, (n,), np.dtype("u1"), b"\0", 0, (0,))
    nested = [0]
    for _ in range(6):  # six levels of 100 references to the level below: 10**12 labels from a few kB
        nested = [nested] * 100
    cyclic = []
    cyclic.append(cyclic)
    import _codecs

    doubling = b"\0"  # "hex"-encoded 40 times over: a terabyte
    for _ in range(40):
        doubling = Reduce(_codecs.encode, doubling, "hex")
    real = np.zeros((2, 3072), np.uint8)
    objects = np.empty(2, dtype=object)  # filled by hand: np.array() would expand the nested lists
    objects[0], objects[1] = nested, 1
    return {
        "zero-stride-array": pickle.dumps({"data": zero_stride, "labels": labels}, protocol=2),
        "huge-empty-array": pickle.dumps({"data": Reduce(_reconstruct, np.ndarray, (1 << 40,), b"b"),
                                          "labels": [0, 1]}, protocol=2),
        "object-array": pickle.dumps({"data": objects, "labels": [0, 1]}, protocol=2),
        "exponential-lists": pickle.dumps({"data": real, "labels": nested}, protocol=2),
        "self-containing-list": pickle.dumps({"data": real, "labels": cyclic}, protocol=2),
        "codec-chain": pickle.dumps({"data": doubling, "labels": [0]}, protocol=2),
    }


def gzip_bomb(path, member: str, size: int):
    """A .tar.gz holding ``member`` of ``size`` zero bytes: about a thousandth of that on disk."""
    info = tarfile.TarInfo(member)
    info.size = size
    with gzip.open(path, "wb", compresslevel=1) as gz:
        gz.write(info.tobuf(format=tarfile.GNU_FORMAT))
        chunk = bytes(1 << 22)
        for _ in range(size // len(chunk)):
            gz.write(chunk)
        gz.write(bytes(size % len(chunk) + (-size) % 512) + bytes(1024))  # padding, end-of-archive blocks
    return path


def test_hostile_data_files_get_one_line_and_bounded_memory(tmp_path):
    cases = {}
    for name, raw in hostile_pickles().items():
        cases[name] = (builders.write_archive(tmp_path / f"{name}.tar.gz", python_release(batch=raw)),
                       r"data_batch_1: unsafe or corrupt pickle|data_batch_1: refusing")
    names = [b"cat"]
    for _ in range(10):
        names = [names] * 10
    cases["exponential-class-names"] = (
        builders.write_archive(tmp_path / "names.tar.gz", python_release(meta=pickle.dumps({"label_names": names}))),
        r"batches.meta: .*nested more than")
    # A gzip bomb: 307 MB of zero records (a whole number of them) in a file of a few MB.
    bomb = gzip_bomb(tmp_path / "bomb.tar.gz", "cifar-10-batches-bin/data_batch_1.bin", 3073 * 100_000)
    assert bomb.stat().st_size < 2 << 20
    cases["gzip-bomb"] = (bomb, r"data_batch_1.bin.* larger than")
    # A tar of 10,001 empty files (a few kB gzipped): its member list alone would grow without bound.
    many = tmp_path / "many.tar.gz"
    with tarfile.open(many, "w:gz") as tar:
        for i in range(MAX_ENTRIES + 1):
            tar.addfile(tarfile.TarInfo(f"cifar-10-batches-bin/x{i}"), io.BytesIO(b""))
    cases["tar-header-flood"] = (many, r"more than .* entries")
    # An extracted folder whose batch is a sparse file of 64 GiB (no disk used).
    folder = tmp_path / "sparse"
    for name, data in builders.cifar10_binary_files(n_per_batch=2, n_test=2)[0].items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    with open(folder / "cifar-10-batches-bin" / "data_batch_2.bin", "r+b") as f:
        f.truncate(1 << 36)
    cases["sparse-file"] = (folder, r"data_batch_2.bin.* larger than")

    HOSTILE.extend(f"data:{name}" for name in cases)
    rc, out, err = run_limited([sys.executable, "-c", INFO_EACH, *(str(p) for p, _ in cases.values())])
    *lines, peak = out.splitlines() or [""]
    assert rc == 0 and float(peak) < RSS_BUDGET_MB, (rc, f"peak RSS {peak} MB", err[-3000:])
    wrong = {}
    for (name, (_, pattern)), line in zip(cases.items(), lines, strict=True):
        try:
            assert_one_line(*json.loads(line), pattern)
        except AssertionError as e:
            wrong[name] = str(e)[:300]
    assert not wrong, "\n".join(f"{k}: {v}" for k, v in wrong.items())
    # The good release next to them still reads (the caps are far above any official file).
    good = builders.write_archive(tmp_path / "good.tar.gz", python_release())
    from cifarlab.data.cifar import read_official

    assert read_official(good).x_train.shape == (10, 32, 32, 3)


# -- model files: cifarlab.json --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A real .keras file with 10 outputs and a good cifarlab.json."""
    import keras

    from cifarlab.models.io import save_model

    model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Flatten(), keras.layers.Dense(10, "softmax")])
    return save_model(model, tmp_path_factory.mktemp("model") / "model.keras", {"class_names": builders.CIFAR10_NAMES})


def with_metadata(src, dest, raw: bytes):
    """A copy of the .keras zip ``src`` whose cifarlab.json holds ``raw``."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w") as zout:
        for item in zin.infolist():
            if item.filename != "cifarlab.json":
                zout.writestr(item, zin.read(item.filename))
        zout.writestr("cifarlab.json", raw)
    return dest


def cli_main(capsys, *args):
    from cifarlab.cli import main

    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


BAD_METADATA = {
    "a-list": (b"[1, 2]", "not a JSON object"),
    "a-string": (b'"cat"', "not a JSON object"),
    "not-json": (b'{"class_names": [', "not valid JSON"),
    "fewer-names": (json.dumps({"class_names": ["cat", "dog"]}).encode(), "2 class names for a model with 10 outputs"),
    "more-names": (json.dumps({"class_names": builders.CIFAR10_NAMES * 2}).encode(), "20 class names for a model with 10"),
    "names-a-string": (json.dumps({"class_names": "airplane"}).encode(), "class_names is not a list of strings"),
    "names-not-strings": (json.dumps({"class_names": list(range(10))}).encode(), "class_names is not a list of strings"),
}


@pytest.mark.parametrize("case", BAD_METADATA)
def test_bad_cifarlab_json_is_refused_at_load(case, tiny_model, tmp_path, capsys):
    from PIL import Image

    raw, message = BAD_METADATA[case]
    HOSTILE.append(f"model:{case}")
    model = with_metadata(tiny_model, tmp_path / "bad.keras", raw)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "cat.png")
    before = tree(tmp_path)
    rc, out, err = cli_main(capsys, "predict", model, tmp_path / "cat.png")
    assert_one_line(rc, out, err, f"bad.keras: cifarlab.json .*{message}")
    assert tree(tmp_path) == before


# -- training configs and checkpoints --------------------------------------------------------------------

BAD_CONFIGS = {
    "a-list": ("[1, 2]", "not a JSON object"),
    "request-a-list": ('{"request": [1]}', "not a JSON object"),
    "epochs-a-string": ('{"epochs": "3"}', "epochs must be a whole number or null, not '3'"),
    "lr-a-string": ('{"request": {"lr": "0.1"}}', "lr must be a number or null, not '0.1'"),
    "seed-a-bool": ('{"seed": true}', "seed must be a whole number, not True"),
    "quiet-a-string": ('{"quiet": "no"}', "quiet must be true or false, not 'no'"),
    "recipe-a-number": ('{"recipe": 7}', "recipe must be a string, not 7"),
    "limit-a-float": ('{"limit": 2.5}', "limit must be a whole number or null, not 2.5"),
    "not-json": ('{"epochs": ', "not a cifarlab config.json"),
}


@pytest.mark.parametrize("case", BAD_CONFIGS)
def test_bad_config_file_is_refused(case, tmp_path, capsys, monkeypatch):
    text, message = BAD_CONFIGS[case]
    HOSTILE.append(f"config:{case}")
    (tmp_path / "config.json").write_text(text)
    monkeypatch.chdir(tmp_path)  # a default run directory would appear here
    before = tree(tmp_path)
    rc, out, err = cli_main(capsys, "train", "--config", tmp_path / "config.json", "--data", tmp_path / "none")
    assert_one_line(rc, out, err, f"config.json: .*{message}")
    assert tree(tmp_path) == before


# -- run directories ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_archive(tmp_path_factory):
    """100 training and 20 test images in the official binary layout: a training run of a few steps."""
    return builders.cifar10_binary(tmp_path_factory.mktemp("data") / "tiny.tar.gz")[0]


def tiny_train(archive, out, epochs=1, **kw):
    from cifarlab.training.train import train

    return train(recipe="seed", data=str(archive), epochs=epochs, seed=0, quiet=True, report=False,
                 out=None if out is None else str(out), **kw)


def test_a_folder_cifarlab_did_not_write_is_never_resumed(tiny_archive, tmp_path, capsys):
    hf = tmp_path / "bert-base"  # a Hugging Face model folder: its own config.json and checkpoint/
    (hf / "checkpoint").mkdir(parents=True)
    (hf / "config.json").write_text('{"architectures": ["BertModel"], "hidden_size": 768}')
    (hf / "model.safetensors").write_bytes(b"\0" * 1000)
    (hf / "checkpoint" / "latest.weights.h5").write_bytes(b"not ours")
    HOSTILE.append("run-dir:foreign-config-json")
    before = tree(hf)
    rc, out, err = cli_main(capsys, "train", "--recipe", "seed", "--data", tiny_archive, "--epochs", 1,
                            "--out", hf, "--quiet")
    assert_one_line(rc, out, err, f"{hf} .*not made by cifarlab train .*choose another --out")
    assert tree(hf) == before


def test_a_bad_marker_or_checkpoint_state_is_refused_untouched(tmp_path):
    import h5py

    from cifarlab.training import checkpoint

    request = {"recipe": "seed", "epochs": 1}
    run = checkpoint.claim(tmp_path / "run", request)
    run.release()
    (run.out / "config.json").write_text(json.dumps({"request": request}))
    target = checkpoint.path(run.out)
    target.parent.mkdir()
    states = {"a-list": "[]", "no-epoch": '{"step": 0, "history": []}', "epoch-a-string":
              '{"epoch": "2", "step": 0, "history": []}', "history-not-a-list":
              '{"epoch": 1, "step": 0, "history": 5}', "rng-a-list": '{"epoch": 1, "step": 0, "history": [], "rng": []}',
              "not-json": "{",
              "portable-without-shuffle-rng": '{"epoch": 1, "step": 0, "history": [], "trainer": "portable", '
                                              '"sums": [0, 0, 0], "steps_per_epoch": 5, "augment_rng": {}}'}
    for name, raw in states.items():
        HOSTILE.append(f"checkpoint:{name}")
        with h5py.File(target, "w") as f:
            f.attrs[checkpoint.STATE_ATTR] = raw
        before = tree(run.out)
        with pytest.raises(CifarlabError, match="unreadable checkpoint .*move it away"):
            checkpoint.claim(run.out, request)
        assert tree(run.out) == before, name
    target.unlink()
    marker = run.out / checkpoint.MARKER
    for name, raw in {"marker-not-json": "cifarlab", "marker-from-the-future": '{"format": 99}'}.items():
        HOSTILE.append(f"run-dir:{name}")
        marker.write_text(raw)
        before = tree(run.out)
        with pytest.raises(CifarlabError, match=f"{checkpoint.MARKER}.* (unreadable|format)"):
            checkpoint.claim(run.out, request)
        assert tree(run.out) == before, name


def test_a_second_run_on_the_same_out_is_refused_naming_the_first(tiny_archive, tmp_path, capsys):
    from cifarlab.training import checkpoint

    first = checkpoint.claim(tmp_path / "run", {})  # held, as a run in progress holds it
    try:
        before = tree(first.out)
        rc, out, err = cli_main(capsys, "train", "--recipe", "seed", "--data", tiny_archive, "--epochs", 1,
                                "--out", first.out, "--quiet")
        assert_one_line(rc, out, err, f"{first.out} is in use by another cifarlab run \\(pid {os.getpid()}\\)")
        assert tree(first.out) == before
    finally:
        first.release()
    assert checkpoint.claim(first.out, {}).resuming  # released: the folder is free again


def test_default_run_names_made_in_the_same_second_do_not_collide(tiny_archive, tmp_path, monkeypatch):
    from cifarlab.training import checkpoint
    from cifarlab.training import train as train_module

    name = tmp_path / "runs" / "20261202-010000-seed-seed"
    monkeypatch.setattr(train_module, "default_run_dir", lambda model, recipe: name)
    other = checkpoint.claim(name, {}, fresh=True)  # another run, started the same second, holds that name
    try:
        run = tiny_train(tiny_archive, None)
    finally:
        other.release()
    assert other.out == name and run.run_dir == name.with_name(name.name + "-2")
    assert (run.run_dir / "metrics.json").is_file()
    assert sorted(p.name for p in name.iterdir()) == sorted([checkpoint.MARKER, checkpoint.LOCK])  # untouched


def test_a_failure_before_the_first_checkpoint_deletes_only_what_the_run_made(tiny_archive, tmp_path, monkeypatch):
    from cifarlab.training import train as train_module

    def no_optimizer(recipe):
        raise CifarlabError("injected failure before the first checkpoint")

    monkeypatch.setattr(train_module, "_optimizer", no_optimizer)
    existing = tmp_path / "mine"
    existing.mkdir()
    with pytest.raises(CifarlabError, match="injected failure"):
        tiny_train(tiny_archive, existing)
    assert existing.is_dir() and list(existing.iterdir()) == []  # the user's folder stays, as empty as it was
    fresh = tmp_path / "new" / "run"
    with pytest.raises(CifarlabError, match="injected failure"):
        tiny_train(tiny_archive, fresh)
    assert not fresh.exists()  # the folder this run made is gone again


# -- export --------------------------------------------------------------------------------------------------

def test_savedmodel_export_never_deletes_a_folder_that_is_not_a_savedmodel(tiny_model, tiny_archive, tmp_path, capsys):
    run = tmp_path / "run"  # a run directory: what `-o runs/r1` by mistake would name
    run.mkdir()
    (run / "config.json").write_text("{}")
    (run / "model.keras").write_bytes(b"weights")
    almost = tmp_path / "almost"  # a SavedModel with the user's notes inside
    (almost / "variables").mkdir(parents=True)
    (almost / "saved_model.pb").write_bytes(b"pb")
    (almost / "notes.txt").write_text("mine")
    home = tmp_path / "home"
    home.mkdir()
    (home / ".bashrc").write_text("export PATH")
    for name, target, message in (("run-directory", run, "is not a SavedModel"),
                                  ("savedmodel-with-other-files", almost, "notes.txt"),
                                  ("home-folder", home, "is not a SavedModel")):
        HOSTILE.append(f"export:{name}")
        before = tree(tmp_path)
        rc, out, err = cli_main(capsys, "export", tiny_model, "--format", "savedmodel", "-o", target,
                                "--data", tiny_archive)
        assert_one_line(rc, out, err, f"{target}.*{message}.*refusing to replace it")
        assert tree(tmp_path) == before


# -- multi-worker opt-in -----------------------------------------------------------------------------------

def test_an_inherited_tf_config_never_turns_a_plain_train_into_a_cluster_run(monkeypatch, capsys):
    from cifarlab.training import distribute

    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["10.0.0.1:2222", "10.0.0.2:2222"]},
                                                "task": {"type": "worker", "index": 0}}))
    placement = distribute.setup("auto")
    assert placement.kind == "default" and placement.workers == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["cifarlab: warning: TF_CONFIG is set but ignored: this run trains on this machine alone "
                   "(--strategy multiworker joins the cluster it names)"]


def test_launch_refuses_a_strategy_that_is_not_multiworker(capsys):
    rc, out, err = cli_main(capsys, "launch", "--workers", 2, "--", "train", "--strategy", "auto")
    assert_one_line(rc, out, err, "launch trains with --strategy multiworker, not 'auto'")


def test_launch_refuses_when_the_private_network_cannot_be_made(tmp_path):
    from cifarlab.launch import PrivateNetwork

    network = PrivateNetwork()
    network.CLONE_NEWUSER = 1  # an unshare() the kernel refuses (EINVAL), as where user namespaces are off
    with pytest.raises(CifarlabError, match=r"cannot give the workers a private network \(unshare: Invalid argument\)"
                                            r".*--shared-network"):
        network.spawn([sys.executable, "-c", f"open({str(tmp_path / 'ran')!r}, 'w')"], dict(os.environ))
    assert not (tmp_path / "ran").exists()  # the worker never ran


def test_a_checkpoint_with_a_bad_generator_state_is_one_line_at_resume(tiny_archive, tmp_path, monkeypatch):
    import h5py

    from cifarlab.training import checkpoint

    real = checkpoint.Checkpointer.on_epoch_begin

    def crash_in_epoch_2(self, epoch, logs=None):
        if epoch == 1:
            raise RuntimeError("crash after the first epoch's checkpoint")
        real(self, epoch, logs)

    monkeypatch.setattr(checkpoint.Checkpointer, "on_epoch_begin", crash_in_epoch_2)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="crash after"):
        tiny_train(tiny_archive, out, epochs=2, checkpoint_every=0)
    monkeypatch.setattr(checkpoint.Checkpointer, "on_epoch_begin", real)
    with h5py.File(checkpoint.path(out), "a") as f:  # well-formed JSON, a generator state numpy refuses
        state = json.loads(f.attrs[checkpoint.STATE_ATTR])
        state["rng"]["numpy"] = [1, 2, 3, 4, 5]
        f.attrs[checkpoint.STATE_ATTR] = json.dumps(state)
    HOSTILE.append("checkpoint:bad-generator-state")
    with pytest.raises(CifarlabError, match="unreadable checkpoint \\(its random-generator state"):
        tiny_train(tiny_archive, out, epochs=2, checkpoint_every=0)
    assert checkpoint.path(out).is_file() and not (out / "metrics.json").exists()
