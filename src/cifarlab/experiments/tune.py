"""``cifarlab tune``: Optuna search over recipe fields, judged on validation accuracy only.

The space file (YAML or JSON) maps recipe fields to ranges, choices or fixed values::

    learning_rate: {low: 0.1, high: 1.0, log: true}   # float field: suggest_float
    translate: {low: 0, high: 4}                       # int field: suggest_int (step: optional)
    flip: {choices: [random, alternating]}             # suggest_categorical
    label_smoothing: 0.2                               # fixed for every trial

The driver owns the study (TPE sampler, median pruning on each epoch's
``val_accuracy``: the held-out part of the training set, never the test set), stored in
SQLite in the output folder by default or any SQLAlchemy URL (``--storage``), so a
killed study resumes: its finished trials stay, a trial whose driver died is marked
failed and enqueued again with the same values in the same run directory (resuming
from its checkpoint). Every trial is an ordinary run directory ``trial-NNNN/``; the
folder also gets ``results.csv`` (one row per trial) and ``best.yaml``, which
``cifarlab train --config best.yaml`` trains.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

from cifarlab.errors import CifarlabError
from cifarlab.fileio import write_json, write_text

SPEC, RESULTS, BEST = "tune.json", "results.csv", "best.yaml"
OBJECTIVE = "val_accuracy"
RANGE_KEYS = {"low", "high", "log", "step"}


def load_space(path: str | os.PathLike) -> dict:
    """The space file as ``{field: {"kind": "float"|"int"|"choices"|"fixed", ...}}``; CifarlabError if malformed."""
    import yaml

    from cifarlab.training.overrides import coerce, field_types

    path = Path(path)
    try:
        text = path.read_text()
        raw = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except FileNotFoundError:
        raise CifarlabError(f"space file {path} not found") from None
    except (OSError, ValueError, yaml.YAMLError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CifarlabError(f"{path}: not a YAML/JSON space file ({first})") from None
    if not isinstance(raw, dict) or not raw:
        raise CifarlabError(f"{path}: a space file maps recipe fields to ranges, choices or values")
    space = {}
    for name, spec in raw.items():
        where = f"{path}: {name}"
        kinds = field_types().get(name)
        if kinds is None:
            coerce(str(name), None)  # raises the one-line unknown-field error
        try:
            if isinstance(spec, dict) and "choices" in spec:
                if set(spec) != {"choices"} or not isinstance(spec["choices"], list) or not spec["choices"]:
                    raise CifarlabError("choices must be the only key, with a non-empty list")
                space[name] = {"kind": "choices", "choices": [coerce(name, c) for c in spec["choices"]]}
            elif isinstance(spec, dict):
                if not {"low", "high"} <= set(spec) <= RANGE_KEYS:
                    raise CifarlabError(f"a range has low and high (and optionally log, step), not {sorted(spec)}")
                kind = "int" if int in kinds and float not in kinds else "float" if float in kinds else None
                if kind is None:
                    raise CifarlabError("only number fields take a range; give choices")
                low, high = coerce(name, spec["low"]), coerce(name, spec["high"])
                if not low < high:
                    raise CifarlabError(f"low must be below high, not {low!r} and {high!r}")
                log = spec.get("log", False)
                if not isinstance(log, bool) or (log and low <= 0):
                    raise CifarlabError("log must be true or false, and a log range needs low > 0")
                step = spec.get("step")
                if step is not None and (isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0 or log):
                    raise CifarlabError("step must be a positive number, and not with log")
                space[name] = {"kind": kind, "low": low, "high": high, "log": log, "step": step}
            else:
                space[name] = {"kind": "fixed", "value": coerce(name, spec)}
        except CifarlabError as e:
            raise CifarlabError(f"{where}: {e}") from None
    return space


def suggest(trial, space: dict) -> tuple[dict, dict]:
    """(searched values, all overrides) for one Optuna trial."""
    searched, fixed = {}, {}
    for name, s in space.items():
        if s["kind"] == "fixed":
            fixed[name] = s["value"]
        elif s["kind"] == "choices":
            searched[name] = trial.suggest_categorical(name, s["choices"])
        elif s["kind"] == "int":
            searched[name] = trial.suggest_int(name, s["low"], s["high"], step=int(s["step"] or 1), log=s["log"])
        else:
            searched[name] = trial.suggest_float(name, s["low"], s["high"], step=s["step"], log=s["log"])
    return searched, {**fixed, **searched}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover(study, say) -> int:
    """Trials left RUNNING by a driver on this machine that is gone: failed, and enqueued again as they were.

    Trials of live drivers (this study may be shared by several) are left alone.
    """
    from optuna.trial import TrialState

    here = socket.gethostname()
    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        host, _, pid = str(t.user_attrs.get("driver", "")).rpartition(":")
        if host != here or not pid.isdigit() or _alive(int(pid)):
            continue
        study.tell(t.number, state=TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={"run_dir": t.user_attrs.get("run_dir"), "retry_of": t.number})
        n += 1
    if n:
        say(f"re-enqueued {n} trial(s) whose driver had died")
    return n


def tune(recipe: str, space_file: str | os.PathLike, trials: int, out: str | os.PathLike, storage: str | None = None,
         study_name: str | None = None, data: str | None = None, dataset: str = "cifar10", limit: int | None = None,
         epochs: int | None = None, seed: int = 0, workers: int | None = None, ray: str | None = None,
         cpus_per_trial: float = 1, gpus_per_trial: float = 0, retries: int = 2, tracker=None, report: bool = False,
         startup_trials: int = 5, warmup_epochs: int = 2, quiet: bool = False, pin_cores: bool = False) -> dict:
    """Run the study until ``trials`` trials are complete or pruned; return the best (``best.yaml``'s content)."""
    import optuna
    from optuna.trial import TrialState

    from cifarlab.experiments import execution
    from cifarlab.experiments.sweep import absolute
    from cifarlab.training.config import TrainConfig, resolve

    if trials < 1:
        raise CifarlabError(f"--trials must be at least 1, not {trials}")
    out = Path(out)
    space = load_space(space_file)
    base = {"recipe": recipe, "data": absolute(data), "dataset": dataset, "limit": limit, "epochs": epochs}
    resolve(TrainConfig(**base, overrides={k: _first(s) for k, s in space.items()}))  # names and types, now
    spec = {"train": base, "space": space, "seed": seed}
    _check_spec(out, spec)
    pool = execution.make_pool(workers, ray, out / "logs", cpus_per_trial, gpus_per_trial, pin_cores)
    if tracker is not None:
        tracker.check()
    out.mkdir(parents=True, exist_ok=True)
    storage = storage or f"sqlite:///{(out / 'study.db').resolve()}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(
            storage=storage, study_name=study_name or out.name, direction="maximize", load_if_exists=True,
            sampler=optuna.samplers.TPESampler(seed=seed),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=warmup_epochs))
    except Exception as e:  # noqa: BLE001 - a bad URL, a refused database: the user's to fix
        raise CifarlabError(f"cannot open the Optuna study at {storage} ({str(e).splitlines()[0][:200]})") from None
    write_json(out / SPEC, {**spec, "storage": storage, "study": study.study_name})
    say = (lambda line: None) if quiet else (lambda line: print(line, flush=True))
    recover(study, say)
    running: dict[str, object] = {}
    counted = (TrialState.COMPLETE, TrialState.PRUNED)
    done = len(study.get_trials(deepcopy=False, states=counted))
    say(f"study {study.study_name} ({storage}): {done} of {trials} trials done, "
        f"{pool.describe()['executor']}, {pool.free()} at a time")
    state = {"done": done}

    def next_job():
        if state["done"] + len(running) >= trials:
            return None
        trial = study.ask()
        searched, overrides = suggest(trial, space)
        run_dir = Path(trial.user_attrs.get("run_dir") or out / f"trial-{trial.number:04d}")
        trial.set_user_attr("driver", f"{socket.gethostname()}:{os.getpid()}")
        trial.set_user_attr("run_dir", str(run_dir))
        key = f"trial-{trial.number:04d}"
        running[key] = trial
        return {"key": key, "params": searched, "config": {
            **base, "overrides": overrides, "seed": seed, "deterministic": True, "out": str(run_dir.resolve()),
            "quiet": True, "report": report, "validate_on": "holdout"}}

    def on_start(job, attempt):
        if tracker is not None:
            tracker.start(job, spec)

    def on_epoch(job, row):
        if tracker is not None:
            tracker.epoch(job, row)
        if OBJECTIVE not in row:
            return True
        trial = running[job["key"]]
        trial.report(float(row[OBJECTIVE]), step=int(row["epoch"]))
        return not trial.should_prune()

    def on_result(job, msg):
        if tracker is not None:
            tracker.finish(job, msg)
        trial = running.pop(job["key"])
        if msg["event"] == "done" and OBJECTIVE in msg["metrics"]:
            study.tell(trial, msg["metrics"][OBJECTIVE])
            state["done"] += 1
            say(f"  {job['key']}: {OBJECTIVE} {msg['metrics'][OBJECTIVE]:.4f} {job['params']}")
        elif msg["event"] == "stopped":
            study.tell(trial, state=TrialState.PRUNED)
            state["done"] += 1
            say(f"  {job['key']}: pruned {job['params']}")
        else:
            study.tell(trial, state=TrialState.FAIL)
            say(f"  {job['key']}: failed: {msg.get('message', msg['event'])}")
            if msg["event"] == "error":  # the user's mistake: every further trial would fail the same way
                raise CifarlabError(f"trial {job['key']}: {msg.get('message')}")

    execution.drive(pool, next_job, on_result, on_epoch=on_epoch, on_start=on_start, retries=retries,
                    say=lambda line: print(line, file=sys.stderr, flush=True))
    return write_results(study, out, base, seed)


def _first(s: dict):
    return s["value"] if s["kind"] == "fixed" else s["choices"][0] if s["kind"] == "choices" else s["low"]


def _check_spec(out: Path, spec: dict) -> None:
    path = out / SPEC
    if not path.exists():
        if out.exists() and any(p.name != "logs" for p in out.iterdir()):
            raise CifarlabError(f"{out} already exists and is not a tune folder; choose another -o")
        return
    try:
        before = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CifarlabError(f"{path} is unreadable ({e}); choose another -o") from None
    norm = json.loads(json.dumps(spec))
    diff = [k for k in ("train", "space", "seed") if before.get(k) != norm[k]]
    if diff:
        raise CifarlabError(f"{out} holds a study with other settings ({', '.join(diff)} differ); "
                            "rerun it with the same settings or choose another -o")


def write_results(study, out: Path, base: dict, seed: int) -> dict:
    """``results.csv`` (one row per trial) and ``best.yaml`` (a config ``train --config`` accepts)."""
    import yaml
    from optuna.trial import TrialState

    frame = study.trials_dataframe(attrs=("number", "value", "params", "state", "duration", "user_attrs"))
    write_text(out / RESULTS, frame.to_csv(index=False))
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return {}
    best = max(complete, key=lambda t: t.value)
    spec = json.loads((out / SPEC).read_text())
    fixed = {k: s["value"] for k, s in spec["space"].items() if s["kind"] == "fixed"}
    config = {**{k: v for k, v in base.items() if v is not None}, "overrides": {**fixed, **best.params},
              "seed": seed, "deterministic": True, "validate_on": "holdout"}
    header = (f"# cifarlab tune: best of {len(complete)} complete trials of study {study.study_name}: "
              f"trial {best.number}, {OBJECTIVE} {best.value:.4f}\n# train it: cifarlab train --config {out / BEST}\n")
    write_text(out / BEST, header + yaml.safe_dump(config, sort_keys=False))
    return {"trial": best.number, OBJECTIVE: best.value, "config": config, "run_dir": best.user_attrs.get("run_dir")}
