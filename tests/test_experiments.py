"""Experiments: statistics against scipy, bad input, and real sweeps, studies, Ray and MLflow on loopback.

Trials are the quick recipe on 500 images of the small slice for 1-3 epochs; each is a
fresh worker process (most of its time is TensorFlow's start-up).
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from cifarlab.errors import CifarlabError
from cifarlab.experiments import stats

A = [0.9102, 0.9113, 0.9093, 0.9121, 0.9087, 0.9110, 0.9099, 0.9105]
B = [0.9125, 0.9131, 0.9118, 0.9140, 0.9109, 0.9122, 0.9135, 0.9129, 0.9117, 0.9127]


def cli(*args) -> list[str]:
    return [sys.executable, "-m", "cifarlab", *map(str, args)]


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}


def run_cli(*args, timeout=300, extra_env=None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cli(*args), env={**env(), **(extra_env or {})}, capture_output=True, text=True,
                          timeout=timeout, **kw)


def tiny(archive, epochs=1) -> list[str]:
    return ["--recipe", "quick", "--data", archive, "--limit", "500", "--epochs", epochs, "--no-report", "--quiet"]


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_for(pred, timeout: float, what: str, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: the process ended first ({proc.returncode})")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


# ------------------------------------------------------------------ statistics


def test_summary_interval_matches_scipy():
    s = stats.summarize(A)
    lo, hi = sps.t.interval(0.95, len(A) - 1, loc=np.mean(A), scale=sps.sem(A))
    assert s["n"] == 8 and s["mean"] == pytest.approx(np.mean(A))
    assert s["std"] == pytest.approx(np.std(A, ddof=1))
    assert (s["ci_low"], s["ci_high"]) == pytest.approx((lo, hi), rel=1e-12)
    assert stats.summarize([0.5])["std"] is None


def test_welch_matches_scipy():
    w = stats.welch(A, B)
    ref = sps.ttest_ind(B, A, equal_var=False)
    ci = ref.confidence_interval(0.95)
    assert w["t"] == pytest.approx(ref.statistic, rel=1e-10)
    assert w["p"] == pytest.approx(ref.pvalue, rel=1e-8)
    assert w["df"] == pytest.approx(ref.df, rel=1e-10)
    assert (w["ci_low"], w["ci_high"]) == pytest.approx((ci.low, ci.high), rel=1e-10)
    assert w["diff"] == pytest.approx(np.mean(B) - np.mean(A))


def test_bootstrap_agrees_with_scipy_and_effect_size_with_its_formula():
    bs = stats.bootstrap(A, B)
    ref = sps.bootstrap((A, B), lambda x, y, axis=-1: np.mean(y, axis=axis) - np.mean(x, axis=axis),
                        method="percentile", n_resamples=10_000, random_state=np.random.default_rng(1))
    # Different random draws: the two percentile intervals agree to a small share of the difference.
    tol = 0.1 * (np.mean(B) - np.mean(A))
    assert bs["ci_low"] == pytest.approx(ref.confidence_interval.low, abs=tol)
    assert bs["ci_high"] == pytest.approx(ref.confidence_interval.high, abs=tol)
    assert stats.bootstrap(A, B) == bs  # fixed seed: reproducible
    na, nb = len(A), len(B)
    pooled = np.sqrt(((na - 1) * np.var(A, ddof=1) + (nb - 1) * np.var(B, ddof=1)) / (na + nb - 2))
    d = (np.mean(B) - np.mean(A)) / pooled
    assert stats.hedges_g(A, B) == pytest.approx(d * (1 - 3 / (4 * (na + nb) - 9)))


def test_sentence_says_which_is_better_by_how_much():
    text = stats.sentence(stats.compare(A, B), "base", "new")
    w = stats.welch(A, B)
    assert text.startswith(f"new is {100 * w['diff']:.2f} ± {100 * (w['ci_high'] - w['ci_low']) / 2:.2f} points better")
    assert "10 vs 8 runs" in text and "p < 0.001" in text


# ------------------------------------------------------------------ parsing and bad input


def test_set_values_are_checked_against_the_recipe_fields():
    from cifarlab.training.overrides import override_recipe, parse_assignments
    from cifarlab.registry import get_recipe

    got = parse_assignments(["label_smoothing=0.1", "flip=random", "crops=[[24, 0.5]]", "epochs=2"])
    assert got == {"label_smoothing": 0.1, "flip": "random", "crops": [[24, 0.5]], "epochs": 2}
    r = override_recipe(get_recipe("quick"), got)
    assert r.options.crops == ((24, 0.5),) and r.options.label_smoothing == 0.1 and r.epochs == 2
    with pytest.raises(CifarlabError, match="no field 'monitor' for the 'fast' trainer"):
        override_recipe(get_recipe("quick"), parse_assignments(["monitor=val_loss"]))
    with pytest.raises(CifarlabError, match="label_smoothing must be in"):
        override_recipe(get_recipe("quick"), {"label_smoothing": 1.5})
    for bad, says in (("nope=1", "unknown recipe field 'nope'"), ("batch_size=0.5", "takes int"),
                      ("nesterov=1", "takes bool"), ("label_smoothing", "key=value")):
        with pytest.raises(CifarlabError, match=says):
            parse_assignments([bad])


def test_seed_lists():
    from cifarlab.experiments.sweep import parse_seeds

    assert parse_seeds("0-3,7,2") == [0, 1, 2, 3, 7]
    for bad in ("3-1", "a", "1,,2"):
        with pytest.raises(CifarlabError):
            parse_seeds(bad)


@pytest.mark.parametrize("space, says", [
    ("learning_rate: {low: 1, high: [\n", "not a YAML/JSON space file"),
    ("nope: {low: 1, high: 2}\n", "unknown recipe field 'nope'"),
    ("learning_rate: {low: 2, high: 1}\n", "low must be below high"),
    ("flip: {low: 1, high: 2}\n", "only number fields take a range"),
    ("batch_size: {choices: [100, 0.5]}\n", "takes int"),
])
def test_a_malformed_space_file_is_one_line_and_writes_nothing(tmp_path, space, says):
    from cifarlab.experiments.tune import load_space

    (tmp_path / "space.yaml").write_text(space)
    with pytest.raises(CifarlabError, match=says):
        load_space(tmp_path / "space.yaml")


def test_bad_input_on_the_command_line_is_one_line_exit_2_and_nothing_written(small_archive, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("learning_rate: {low: 0.1, high: [1\n")
    cases = [
        (["train", *tiny(small_archive), "--set", "nope=1", "--out", tmp_path / "t"], "unknown recipe field 'nope'"),
        (["sweep", *tiny(small_archive), "--set", "batch_size=x", "-o", tmp_path / "s"], "takes int"),
        (["tune", *tiny(small_archive), "--space", space, "--trials", "2", "-o", tmp_path / "u"], "not a YAML/JSON"),
        (["sweep", *tiny(small_archive), "--ray", f"127.0.0.1:{closed_port()}", "-o", tmp_path / "r"],
         "no Ray cluster answers"),
        (["sweep", *tiny(small_archive), "--track", f"mlflow=http://127.0.0.1:{closed_port()}", "-o", tmp_path / "m"],
         "MLflow at http://127.0.0.1:"),
        (["train", *tiny(small_archive), "--track", f"mlflow=http://127.0.0.1:{closed_port()}",
          "--out", tmp_path / "tm"], "refuses"),
    ]
    for args, says in cases:
        r = run_cli(*args, timeout=120)
        assert r.returncode == 2, (args, r.stderr[-2000:])
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("cifarlab: error: ") and says in lines[0], (args, r.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["space.yaml"]


def test_workers_get_even_shares_of_the_cores_and_gpus():
    from cifarlab.experiments.execution import LocalPool, core_shares

    assert core_shares(2, [0, 1, 2, 3, 4]) == [[0, 1, 2], [3, 4]]
    assert core_shares(3, [0, 1]) == [[0], [1], [0]]
    pool = LocalPool(2, Path("unused"), cores=[0, 1, 2, 3], gpus=["0", "1", "2"])
    assert pool.describe()["gpus"] == [["0", "1"], ["2"]]
    assert LocalPool(2, Path("unused"), cores=[0, 1], gpus=[]).describe()["gpus"] is None


# ------------------------------------------------------------------ real runs


def _children(pid: int) -> list[int]:
    import psutil

    return [c.pid for c in psutil.Process(pid).children(recursive=True)]


def _gone(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_sweep_retries_a_killed_worker_and_a_killed_sweep_resumes_only_unfinished_trials(small_archive, tmp_path):
    out = tmp_path / "sweep"
    args = [a for a in tiny(small_archive, epochs=2) if a != "--quiet"]
    cmd = cli("sweep", *args, "--seeds", "0-1", "--set", "batch_size=100", "-o", out)
    driver = subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # A worker killed mid-trial (after its first epoch's checkpoint): the driver starts the trial again.
    wait_for(lambda: (out / "seed-0" / "checkpoint").exists(), 120, "seed-0's first checkpoint", driver)
    first = _children(driver.pid)
    os.kill(first[0], signal.SIGKILL)
    # The whole sweep killed after seed 0 finished: its worker dies with it.
    wait_for(lambda: (out / "seed-0" / "metrics.json").exists(), 120, "seed 0", driver)
    wait_for(lambda: _children(driver.pid), 60, "the worker of seed 1", driver)
    worker = _children(driver.pid)[0]
    driver.kill()
    _, err = driver.communicate()
    assert "trial seed-0 lost its worker" in err and "retrying (1 of 2)" in err
    wait_for(lambda: _gone(worker), 10, "the orphaned worker to die")
    assert not (out / "seed-1" / "metrics.json").exists()
    done = (out / "seed-0" / "metrics.json").stat().st_mtime_ns

    r = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "1 of 2 trials finished, 1 to run" in r.stdout
    assert (out / "seed-0" / "metrics.json").stat().st_mtime_ns == done  # not trained again
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trials"] == 2 and summary["seeds"] == [0, 1] and summary["missing"] == []
    acc = summary["metrics"]["tta_test_accuracy"]
    vals = [json.loads((out / f"seed-{s}" / "metrics.json").read_text())["tta_test_accuracy"] for s in (0, 1)]
    assert acc["mean"] == pytest.approx(np.mean(vals)) and acc["ci_low"] < acc["mean"] < acc["ci_high"]
    assert [e for e in summary["epochs"]["val_accuracy"]["epoch"]] == [1, 2]
    html = (out / "sweep.html").read_text()
    assert "<script" not in html and "http://" not in html.split("</head>")[0] and "data:image/png;base64," in html
    # A comparison of the sweep with itself: no difference, and the page is written.
    c = run_cli("compare", out, out, "-o", tmp_path / "cmp.html", "--json", timeout=120)
    assert c.returncode == 0, c.stderr
    res = json.loads(c.stdout)
    assert res["welch"]["diff"] == 0 and res["n_a"] == res["n_b"] == 2
    assert "data:image/png;base64," in (tmp_path / "cmp.html").read_text()
    t = run_cli("runs", tmp_path, timeout=60)
    assert t.returncode == 0 and "sweep/seed-0" in t.stdout and "sweep/seed-1" in t.stdout


def test_a_study_killed_mid_trial_resumes_the_trial_and_best_yaml_is_a_train_config(small_archive, tmp_path):
    import optuna
    from optuna.trial import TrialState

    from cifarlab.training.config import TrainConfig, resolve

    space = tmp_path / "space.json"
    space.write_text(json.dumps({"learning_rate": {"low": 0.1, "high": 1.0, "log": True}, "batch_size": 100}))
    out = tmp_path / "tune"
    args = [a for a in tiny(small_archive, epochs=3) if a != "--quiet"]
    cmd = cli("tune", *args, "--space", space, "--trials", "1", "-o", out)
    driver = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: (out / "trial-0000" / "checkpoint").exists(), 120, "trial 0's first checkpoint", driver)
    driver.kill()
    driver.communicate()
    r = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "re-enqueued 1 trial(s)" in r.stdout
    study = optuna.load_study(study_name="tune", storage=f"sqlite:///{out / 'study.db'}")
    t0, t1 = study.trials
    assert t0.state == TrialState.FAIL and t1.state == TrialState.COMPLETE
    assert t1.params == t0.params and t1.user_attrs["retry_of"] == 0
    assert t1.user_attrs["run_dir"] == t0.user_attrs["run_dir"]  # resumed in place, from its checkpoint
    history = (out / "trial-0000" / "history.csv").read_text().splitlines()
    assert len(history) == 4  # header + 3 epochs: the epochs before the kill were kept
    assert max(t1.intermediate_values) == 3  # reported to the pruner epoch by epoch
    metrics = json.loads((out / "trial-0000" / "metrics.json").read_text())
    assert t1.value == pytest.approx(metrics["val_accuracy"])  # judged on validation, not test
    cfg = TrainConfig.from_json(out / "best.yaml")
    recipe, _ = resolve(cfg)
    assert recipe.learning_rate == pytest.approx(t1.params["learning_rate"]) and recipe.batch_size == 100
    assert (out / "results.csv").read_text().splitlines()[0].startswith("number,value,params_learning_rate")


@pytest.fixture
def ray_head(tmp_path_factory):
    """A Ray head on 127.0.0.1 (``ray start --head --block``), stopped by its own process (never `ray stop`).

    Yields its address and the environment a driver needs: a token of its own (Ray's token
    authentication), so the test neither reads nor writes ~/.ray/auth_token.
    """
    import secrets

    ray_bin = Path(sys.executable).with_name("ray")
    if not ray_bin.exists():
        pytest.skip("ray is not installed")
    port = closed_port()
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    temp = Path(f"/tmp/cl-ray-{os.getpid()}")  # short: Ray's socket paths have a length limit
    proc = subprocess.Popen([str(ray_bin), "start", "--head", "--block", "--port", str(port), "--node-ip-address",
                             "127.0.0.1", "--num-cpus", "2", "--include-dashboard", "false", "--disable-usage-stats",
                             "--ray-client-server-port", str(closed_port()), "--temp-dir", str(temp)],
                            env={**env(), **auth}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: _answers(port), 120, "the Ray head", proc)
        yield f"127.0.0.1:{port}", auth
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        import shutil

        shutil.rmtree(temp, ignore_errors=True)


def _answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def test_a_sweep_on_a_ray_cluster(small_archive, tmp_path, ray_head):
    out = tmp_path / "ray-sweep"
    address, auth = ray_head
    time.sleep(3)  # the raylet registers a moment after the GCS port opens
    r = run_cli("sweep", *[a for a in tiny(small_archive) if a != "--quiet"], "--seeds", "0-1", "--ray", address,
                "-o", out, timeout=400, extra_env=auth)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "ray" in r.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trials"] == 2
    for s in (0, 1):
        cfg = json.loads((out / f"seed-{s}" / "config.json").read_text())
        assert cfg["request"]["seed"] == s and (out / f"seed-{s}" / "model.keras").is_file()


@pytest.fixture
def mlflow_server(tmp_path):
    port = closed_port()
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    proc = subprocess.Popen([str(mlflow_bin), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                             "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
                             "--artifacts-destination", str(tmp_path / "artifacts")],
                            cwd=tmp_path, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        import urllib.request

        def healthy():
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).status == 200
            except OSError:
                return False

        wait_for(healthy, 120, "the MLflow server", proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: the server and its workers (a throwaway database)
        proc.wait(30)


def test_train_track_logs_params_epochs_report_and_model_to_an_mlflow_server(small_archive, tmp_path, mlflow_server):
    from mlflow.tracking import MlflowClient

    out = tmp_path / "tracked"
    args = [a for a in tiny(small_archive, epochs=2) if a != "--no-report"]
    r = run_cli("train", *args, "--set", "label_smoothing=0.1", "--track", f"mlflow={mlflow_server}", "--out", out,
                timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    client = MlflowClient(tracking_uri=mlflow_server)
    exp = client.get_experiment_by_name("cifarlab")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "tracked"
    assert run.data.params["recipe.name"] == "quick" and run.data.params["recipe.label_smoothing"] == "0.1"
    assert run.data.params["request.limit"] == "500"
    val = client.get_metric_history(run.info.run_id, "val_accuracy")
    assert [m.step for m in val] == [1, 2]
    metrics = json.loads((out / "metrics.json").read_text())
    assert run.data.metrics["final.test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report.html", "model.keras", "metrics.json", "history.csv"} <= names
