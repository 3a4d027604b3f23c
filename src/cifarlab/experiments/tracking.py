"""``--track mlflow[=URI]``: trials logged to MLflow as they run.

Each trial (or ``cifarlab train`` run) becomes one MLflow run in an experiment named
after the sweep, study or ``cifarlab``: its request and resolved recipe as parameters,
every epoch's row as metrics (step = epoch), the final metrics, and ``report.html``,
``model.keras``, ``metrics.json``, ``history.csv`` and ``config.json`` as artifacts.
The server is asked once before any training (a URI that refuses is a one-line error);
a failure later is a warning and never stops training.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from cifarlab.errors import CifarlabError

ARTIFACTS = ("report.html", "model.keras", "metrics.json", "history.csv", "config.json")
CHECK_TIMEOUT_S = "5"


def parse_track(value: str | None, experiment: str):
    """The tracker ``--track`` asks for (``mlflow`` or ``mlflow=URI``), or None."""
    if not value:
        return None
    kind, _, uri = value.partition("=")
    if kind != "mlflow":
        raise CifarlabError(f"--track takes mlflow or mlflow=URI, not {value!r}")
    return MlflowTracker(uri or None, experiment)


def _flat(recipe: dict) -> dict:
    """A recipe's dict with its trainer's ``options`` lifted beside the core fields."""
    return {**{k: v for k, v in recipe.items() if k != "options"}, **(recipe.get("options") or {})}


class MlflowTracker:
    def __init__(self, uri: str | None, experiment: str):
        self.uri, self.experiment = uri, experiment
        self.client = self.experiment_id = None
        self.warned = False

    def check(self) -> None:
        """Reach the tracking server and get (or create) the experiment, or raise CifarlabError."""
        if self.client is not None:
            return
        # MLflow retries a refused request 7 times with back-off by default: minutes before an error.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", CHECK_TIMEOUT_S)
        import mlflow
        from mlflow.tracking import MlflowClient

        uri = self.uri or mlflow.get_tracking_uri()
        try:
            client = MlflowClient(tracking_uri=uri)
            exp = client.get_experiment_by_name(self.experiment)
            self.experiment_id = exp.experiment_id if exp else client.create_experiment(self.experiment)
        except Exception as e:  # noqa: BLE001 - any refusal (connection, auth, bad URI) is the user's to fix
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise CifarlabError(f"MLflow at {uri} refuses ({first})") from None
        self.client, self.uri = client, uri

    def _safely(self, what: str, fn, *args, **kw):
        try:
            return fn(*args, **kw)
        except Exception as e:  # noqa: BLE001 - tracking must never cost a trial
            if not self.warned:
                print(f"cifarlab: warning: MLflow {what} failed ({str(e).splitlines()[0][:200]}); "
                      "training goes on", file=sys.stderr)
                self.warned = True

    def start(self, job: dict, spec: dict | None = None) -> None:
        """Open an MLflow run for ``job`` (its id kept in ``job["mlflow_run_id"]``) and log its parameters."""
        from mlflow.entities import Param

        from cifarlab.training.config import TrainConfig, resolve

        self.check()
        if "mlflow_run_id" in job:  # a retry: the lost attempt's run ends as failed
            self._safely("set_terminated", self.client.set_terminated, job.pop("mlflow_run_id"), "FAILED")
        cfg = job["config"]
        recipe, _ = resolve(TrainConfig(**cfg))
        run = self._safely("start", self.client.create_run, self.experiment_id, run_name=job["key"],
                           tags={"cifarlab.run_dir": str(cfg.get("out")), "cifarlab.recipe": recipe.name})
        if run is None:
            return
        job["mlflow_run_id"] = run.info.run_id
        params = {**{f"request.{k}": v for k, v in cfg.items() if k not in ("overrides", "quiet") and v is not None},
                  **{f"recipe.{k}": v for k, v in _flat(recipe.to_dict()).items() if k != "description"},
                  **{f"set.{k}": v for k, v in (cfg.get("overrides") or {}).items()},
                  **{f"tune.{k}": v for k, v in (job.get("params") or {}).items()}}
        self._safely("log_params", self.client.log_batch, run.info.run_id,
                     params=[Param(k, str(v)[:6000]) for k, v in params.items()])

    def epoch(self, job: dict, row: dict) -> None:
        from mlflow.entities import Metric

        if "mlflow_run_id" not in job:
            return
        now, step = int(time.time() * 1000), int(row.get("epoch", 0))
        metrics = [Metric(k, float(v), now, step) for k, v in row.items()
                   if k != "epoch" and isinstance(v, (int, float)) and v == v]
        self._safely("log_metrics", self.client.log_batch, job["mlflow_run_id"], metrics=metrics)

    def finish(self, job: dict, msg: dict) -> None:
        """Final metrics and artifacts for a finished trial; the run marked FINISHED, KILLED (pruned) or FAILED."""
        from mlflow.entities import Metric

        run_id = job.get("mlflow_run_id")
        if run_id is None:
            return
        if msg["event"] == "done":
            now = int(time.time() * 1000)
            self._safely("log_metrics", self.client.log_batch, run_id, metrics=[
                Metric(f"final.{k}", float(v), now, 0) for k, v in msg["metrics"].items()])
            run_dir = Path(msg["run_dir"])
            for name in ARTIFACTS:
                if (run_dir / name).is_file():
                    self._safely("log_artifact", self.client.log_artifact, run_id, str(run_dir / name))
        status = {"done": "FINISHED", "stopped": "KILLED"}.get(msg["event"], "FAILED")
        self._safely("set_terminated", self.client.set_terminated, run_id, status)


class TrackedRun:
    """One in-process training (``cifarlab train --track``) as a tracked job; the server is checked here."""

    def __init__(self, tracker: MlflowTracker, cfg):
        from dataclasses import asdict

        tracker.check()
        self.tracker = tracker
        self.job = {"key": Path(cfg.out).name if cfg.out else cfg.recipe, "config": asdict(cfg)}
        tracker.start(self.job)

    def epoch(self, row: dict) -> None:
        self.tracker.epoch(self.job, row)

    def finish(self, msg: dict) -> None:
        from cifarlab.experiments.trial import scalars

        if "metrics" in msg:
            msg = {**msg, "metrics": scalars(msg["metrics"])}
        self.tracker.finish(self.job, msg)
