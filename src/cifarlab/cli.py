"""The ``cifarlab`` command: a thin layer over the Python API.

Every user mistake ends as one line on stderr, ``cifarlab: error: ...``, and exit
status 2; an interrupted command exits 130.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cifarlab.errors import CifarlabError


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of argparse's usage + message
        raise CifarlabError(f"{self.prog.split()[-1]}: {message} (see --help)")


def _data_args(p):
    p.add_argument("--data", metavar="PATH",
                   help="archive (.tar.gz), extracted folder or image folder; default: $CIFARLAB_DATA, "
                        "else download the official archive")
    p.add_argument("--dataset", default="cifar10", metavar="NAME",
                   help="which official archive to download when no --data is given "
                        "(cifar10, cifar100, cifar10-python, cifar100-python; default cifar10)")
    p.add_argument("--coarse", action="store_true", help="CIFAR-100: the 20 superclasses instead of 100 classes")


def build_parser() -> argparse.ArgumentParser:
    from cifarlab import MODELS, RECIPES, __version__

    parser = _Parser(prog="cifarlab", description="Train, evaluate and use CNN image classifiers on CIFAR-10.")
    parser.add_argument("--version", action="version", version=f"cifarlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("train", help="train a model and write a run directory")
    _data_args(p)
    p.add_argument("--model", choices=None, metavar="NAME", help=f"model ({', '.join(MODELS)}); default: the recipe's")
    p.add_argument("--recipe", default="fast", metavar="NAME", help=f"recipe ({', '.join(RECIPES)}); default fast")
    p.add_argument("--epochs", type=int, metavar="N", help="override the recipe's number of epochs")
    p.add_argument("--batch-size", type=int, metavar="N", help="override the recipe's batch size")
    p.add_argument("--lr", type=float, metavar="RATE", help="override the recipe's learning rate")
    p.add_argument("--precision", metavar="P", help="auto, bf16, fp16 or fp32; default: the recipe's")
    p.add_argument("--seed", type=int, metavar="N",
                   help="random seed; also turns on deterministic ops, so a rerun gives the same results")
    p.add_argument("--limit", type=int, metavar="N", help="use only the first N training images (quick tries)")
    p.add_argument("--validate-on", default="holdout", choices=("holdout", "test"),
                   help="holdout: 10%% of the training images, stratified (default); "
                        "test: validate on the test set, as the seed notebook did")
    p.add_argument("--out", metavar="RUN_DIR", help="run directory to create (default runs/DATE-MODEL-RECIPE), or an interrupted "
                        "run's directory to resume it")
    p.add_argument("--config", metavar="CONFIG_JSON", help="rerun a run's config.json (other flags override it)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--no-report", action="store_true", help="do not write report.html at the end of the run")
    p.add_argument("--tensorboard", action="store_true", help="write TensorBoard logs into RUN_DIR/tensorboard")
    p.add_argument("--exclude", metavar="FINDINGS[:KINDS]",
                   help="train without the training images of `cifarlab audit`'s findings.csv (KINDS: comma-separated, "
                        "of label, duplicate, leak, outlier, blank; default all)")
    p.add_argument("--relabel", action="store_true", help="with --exclude: give label findings their suggested label "
                                                          "instead of leaving them out")
    p.add_argument("--no-autotune", action="store_true",
                   help="use the default kernels instead of those measured fastest on this machine (cached in "
                        "~/.cache/cifarlab/autotune.json)")
    _set_args(p)
    _track_args(p)
    _scale_args(p)

    p = sub.add_parser("evaluate", help="classification report and confusion matrix on the test set")
    p.add_argument("target", metavar="RUN_DIR|MODEL")
    p.add_argument("--data", metavar="PATH", help="dataset to evaluate on (default: the one the run used)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")

    p = sub.add_parser("predict", help="top-k classes for image files")
    p.add_argument("model", metavar="RUN_DIR|MODEL")
    p.add_argument("images", nargs="+", metavar="IMAGE|DIR", help="image files and folders (searched recursively)")
    p.add_argument("--top-k", type=int, default=3, metavar="K", help="classes to show per image (default 3)")
    p.add_argument("--json", action="store_true", help="print JSON, one object per image")
    p.add_argument("--out", metavar="CSV", help="write a CSV instead of printing; streams through any number of "
                                                "files, and unreadable files get an error column, not a stop")
    p.add_argument("--batch-size", type=int, default=256, metavar="N", help="images per model call (default 256)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("show", help="save a picture of dataset images with their labels")
    _data_args(p)
    p.add_argument("indices", nargs="+", type=int, metavar="INDEX")
    p.add_argument("--split", default="train", choices=("train", "test"))
    p.add_argument("-o", "--output", default="show.png", metavar="PNG", help="picture to write (default show.png)")

    p = sub.add_parser("info", help="shapes, dtype, pixel range and images per class of a dataset")
    _data_args(p)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("summary", help="print a model's layer table and parameter count")
    p.add_argument("model", metavar="NAME|MODEL", help="a registered model name, a .keras file or a run directory")
    p.add_argument("--classes", type=int, default=10, metavar="K", help="number of classes for a named model")

    sub.add_parser("list", help="registered models and recipes")

    p = sub.add_parser("report", help="write one self-contained HTML report of a run")
    p.add_argument("run", metavar="RUN_DIR", help="a run directory, or a folder of runs: the newest vs the one before")
    p.add_argument("-o", "--output", metavar="HTML", help="file to write (default RUN_DIR/report.html)")
    p.add_argument("--compare", metavar="OTHER_RUN", help="a second run directory to show side by side")
    p.add_argument("--data", metavar="PATH", help="where the test images are (default: the data the run used)")
    p = sub.add_parser("serve", help="HTTP prediction service with a web page (FastAPI on uvicorn)")
    p.add_argument("model", metavar="RUN_DIR|MODEL")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--max-upload-mb", type=float, default=10.0, metavar="MB",
                   help="largest request body in MB; more is answered 413 (default 10)")
    p.add_argument("--max-batch", type=int, default=64, metavar="N", help="most images per model call (default 64)")
    p.add_argument("--max-wait-ms", type=float, default=5.0, metavar="MS",
                   help="longest a request waits for others to batch with (default 5)")
    p.add_argument("--allowed-hosts", metavar="NAMES",
                   help="comma-separated Host header names accepted, '*' for any (default: localhost, 127.0.0.1, "
                        "[::1] and the --host address; for 0.0.0.0 also this machine's names)")
    p.add_argument("--max-connections", type=int, default=2048, metavar="N",
                   help="open connections at once; past that new requests get 503 (default 2048)")
    p.add_argument("--max-inflight", type=int, default=128, metavar="N",
                   help="prediction requests in progress at once; past that 503 + Retry-After (default 128)")
    p.add_argument("--max-lag-ms", type=float, default=20.0, metavar="MS",
                   help="while the event loop runs more than this behind, the in-flight limit shrinks below "
                        "--max-inflight; 0 keeps it fixed (default 20)")
    p.add_argument("--max-queue", type=int, default=512, metavar="N",
                   help="images waiting for the model; past that, or after --queue-timeout-ms, 503 (default 512)")
    p.add_argument("--queue-timeout-ms", type=float, default=250.0, metavar="MS",
                   help="longest an image waits for the model before it is turned away with 503 (default 250)")
    p.add_argument("--header-timeout", type=float, default=10.0, metavar="S",
                   help="seconds a client has to send a request's headers (default 10)")
    p.add_argument("--body-timeout", type=float, default=30.0, metavar="S",
                   help="seconds a client has to send a request's body; later is 408 (default 30)")
    p.add_argument("--max-image-pixels", type=int, default=4_000_000, metavar="N",
                   help="decoded pixels per image (a JPEG at its 1/8-1/2 draft scale); more is 400 (default 4000000)")
    p.add_argument("--max-request-pixels", type=int, default=16_000_000, metavar="N",
                   help="decoded pixels per request, all images together; more is 413 (default 16000000)")

    p = sub.add_parser("export", help="export a model to SavedModel, ONNX or TFLite, checked against Keras")
    p.add_argument("model", metavar="RUN_DIR|MODEL")
    p.add_argument("--format", required=True, choices=("savedmodel", "onnx", "tflite"))
    p.add_argument("-o", "--output", required=True, metavar="PATH", help="file (onnx, tflite) or folder (savedmodel)")
    p.add_argument("--data", metavar="PATH", help="dataset whose test images check the export "
                                                  "(default: the one the run used)")
    p.add_argument("--json", action="store_true", help="print the check report as JSON")

    p = sub.add_parser("audit", help="find mislabelled images, duplicates, train/test leaks and outliers in a dataset")
    _data_args(p)
    p.add_argument("--recipe", default="quick", metavar="NAME", help="fast-loop recipe each fold trains by (default quick)")
    p.add_argument("--folds", type=int, default=5, metavar="K", help="cross-fitting folds (default 5)")
    p.add_argument("--epochs", type=float, metavar="N", help="epochs per fold (default 5; fractions allowed)")
    p.add_argument("--batch-size", type=int, metavar="N", help="override the recipe's batch size")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the folds and the training (default 0)")
    p.add_argument("--limit", type=int, metavar="N", help="audit only the first N training images (quick tries)")
    p.add_argument("-o", "--out", default="audit", metavar="DIR",
                   help="folder for findings.csv, audit.json, audit.html and folds/ (default audit); "
                        "an interrupted audit's folder resumes it")
    p.add_argument("--no-report", action="store_true", help="do not write audit.html")
    p.add_argument("--quiet", action="store_true", help="no progress output")

    p = sub.add_parser("launch", help="run a command as N local worker processes (multi-worker training)")
    p.add_argument("--workers", type=int, required=True, metavar="N", help="number of worker processes")
    p.add_argument("--port", type=int, default=0, metavar="PORT",
                   help="first of N consecutive ports on 127.0.0.1 (default: free ones)")
    p.add_argument("--shared-network", action="store_true",
                   help="run the workers on this machine's network instead of a private one (their TensorFlow "
                        "servers then listen on every interface, unauthenticated: only behind a firewall)")
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- train ...",
                   help="the cifarlab command each worker runs, after --")
    _experiment_parsers(sub)
    _backend_args(parser, sub)
    return parser


def _backend_args(parser, sub) -> None:
    """``--backend`` before the command or after it, on every command."""
    from cifarlab.backend import CHOICES

    help_ = ("Keras backend: tensorflow, jax or torch (default: $KERAS_BACKEND, else TensorFlow where installed, "
             "else JAX, else PyTorch)")
    parser.add_argument("--backend", choices=CHOICES, default=None, help=help_)
    for p in sub.choices.values():
        p.add_argument("--backend", choices=CHOICES, default=argparse.SUPPRESS, help=help_)


def _set_args(p):
    p.add_argument("--set", action="append", dest="overrides", metavar="KEY=VALUE",
                   help="override a recipe field (repeatable), e.g. --set label_smoothing=0.1; see `cifarlab list`")


def _track_args(p):
    p.add_argument("--track", metavar="mlflow[=URI]",
                   help="log parameters, per-epoch metrics, the report and the model to MLflow "
                        "(URI default: $MLFLOW_TRACKING_URI, else MLflow's default)")


def _experiment_parsers(sub):
    """sweep, compare, tune and runs (cifarlab.experiments)."""

    def execution_args(p):
        _data_args(p)
        p.add_argument("--recipe", required=True, metavar="NAME", help="recipe to train")
        _set_args(p)
        p.add_argument("--limit", type=int, metavar="N", help="use only the first N training images")
        p.add_argument("--epochs", type=int, metavar="N", help="override the recipe's number of epochs")
        p.add_argument("--workers", type=int, metavar="N",
                       help="trials at a time: local processes, each with its share of the cores as threads (default 1); "
                            "with --ray, at most N Ray tasks (default: as many as the cluster's CPUs hold)")
        p.add_argument("--pin-cores", action="store_true",
                       help="pin each local worker to its cores (a machine of its own; on a shared one it can hurt)")
        p.add_argument("--ray", metavar="auto|local|HOST:PORT",
                       help="run the trials on a Ray cluster: auto (the running one), local (start one here) or its address")
        p.add_argument("--cpus-per-trial", type=float, default=1, metavar="N", help="Ray: CPUs per trial (default 1)")
        p.add_argument("--gpus-per-trial", type=float, default=0, metavar="N", help="Ray: GPUs per trial (default 0)")
        p.add_argument("--retries", type=int, default=2, metavar="N",
                       help="times a trial whose worker died is started again (default 2)")
        p.add_argument("--no-report", action="store_true", help="trials write no report.html")
        p.add_argument("--quiet", action="store_true", help="no progress lines")
        _track_args(p)

    p = sub.add_parser("sweep", help="train a recipe once per seed; summary with confidence intervals")
    execution_args(p)
    p.add_argument("--seeds", default="0-4", metavar="0-9", help="seeds: N, A-B or a list of them (default 0-4)")
    p.add_argument("-o", "--out", metavar="DIR", help="sweep folder (default sweeps/RECIPE); rerun it to resume")

    p = sub.add_parser("compare", help="is sweep B better than sweep A? Welch's test, bootstrap, effect size")
    p.add_argument("a", metavar="SWEEP_A")
    p.add_argument("b", metavar="SWEEP_B")
    p.add_argument("--metric", metavar="NAME", help="final metric (default tta_test_accuracy where the runs have it, "
                                                    "else test_accuracy)")
    p.add_argument("-o", "--output", metavar="HTML", help="also write the comparison as an HTML page")
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")

    p = sub.add_parser("tune", help="Optuna search over recipe fields on validation accuracy, with pruning")
    execution_args(p)
    p.add_argument("--space", required=True, metavar="SPACE.yaml", help="recipe fields to search (YAML or JSON)")
    p.add_argument("--trials", type=int, required=True, metavar="N", help="complete or pruned trials to reach")
    p.add_argument("-o", "--out", metavar="DIR", help="tune folder (default tunes/RECIPE); rerun it to resume")
    p.add_argument("--storage", metavar="URL", help="Optuna storage, any SQLAlchemy URL (default sqlite in DIR)")
    p.add_argument("--study", metavar="NAME", help="study name (default: the folder's name)")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="training seed of every trial and the sampler's")
    p.add_argument("--prune-after", type=int, default=5, metavar="N",
                   help="trials that finish before the median pruner starts pruning (default 5)")

    p = sub.add_parser("runs", help="a table of the run directories under a folder")
    p.add_argument("folder", nargs="?", default="runs", metavar="DIR", help="folder to search (default runs)")
    p.add_argument("--csv", metavar="PATH", help="write the table as CSV instead of printing it")


def _scale_args(p):
    from cifarlab.training.distribute import CHOICES  # no TensorFlow import: the CLI imports it quietly later

    DEFAULT_EVERY_STEPS = 500  # checkpoint.DEFAULT_EVERY_STEPS, which imports Keras

    p.add_argument("--strategy", default=None, choices=CHOICES,
                   help="auto (default): several GPUs, else one device (never a TF_CONFIG cluster); "
                        "mirrored: this machine's GPUs (or --devices logical CPUs); multiworker: the TF_CONFIG cluster "
                        "(both TensorFlow); dataparallel: JAX's keras.distribution.DataParallel over --devices")
    p.add_argument("--devices", type=int, metavar="N",
                   help="local devices per worker: the first N GPUs, or N logical CPU devices without GPUs")
    p.add_argument("--checkpoint-every", type=int, metavar="STEPS",
                   help=f"also checkpoint every STEPS steps within an epoch (default {DEFAULT_EVERY_STEPS}; "
                        "0: only at the end of each epoch)")


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        from cifarlab.backend import use

        use(args.backend)  # before anything imports Keras, which fixes its backend at import
        return COMMANDS[args.command](args) or 0
    except CifarlabError as e:
        print(f"cifarlab: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cifarlab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


def _quiet_keras() -> None:
    """Import Keras and its backend (seconds) without their start-up chatter.

    Every command checks its arguments and input paths first and calls this
    after, so a user's mistake is reported at once, not after the backend starts."""
    from cifarlab._tf import import_quietly
    from cifarlab.backend import current, glue

    import_quietly()
    if current() == "jax":  # compiled programs persist between commands (the user's cache folder)
        from cifarlab.data.download import cache_dir

        glue("jax").use_compilation_cache(cache_dir() / "jax")


def _model_then_keras(path) -> None:
    from cifarlab.models.io import model_file

    model_file(path)
    _quiet_keras()


def cmd_train(args) -> int:
    from cifarlab.training.config import TrainConfig, resolve

    base = TrainConfig.from_json(args.config) if args.config else TrainConfig()
    given = {k: v for k, v in {
        "model": args.model, "recipe": args.recipe if args.config is None or args.recipe != "fast" else None,
        "data": args.data, "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
        "precision": args.precision, "seed": args.seed, "limit": args.limit, "out": args.out,
    }.items() if v is not None}
    if args.seed is not None:
        given["deterministic"] = True
    if args.dataset != "cifar10" or not args.config:
        given["dataset"] = args.dataset
    if args.validate_on != "holdout" or not args.config:
        given["validate_on"] = args.validate_on
    if args.coarse:
        given["coarse"] = True
    if args.config:
        given["out"] = args.out  # a rerun never writes into the old run's directory
    given.update({k: v for k, v in {"strategy": args.strategy, "devices": args.devices,
                                    "checkpoint_every": args.checkpoint_every}.items() if v is not None})
    if args.overrides:
        from cifarlab.training.overrides import parse_assignments

        given["overrides"] = {**(base.overrides or {}), **parse_assignments(args.overrides)}
    cfg = TrainConfig(**{**base.__dict__, **given, "quiet": args.quiet})
    cfg.report, cfg.tensorboard = not args.no_report, args.tensorboard
    if args.exclude is not None:
        cfg.exclude, cfg.relabel = args.exclude, args.relabel
    elif args.relabel:
        cfg.relabel = True  # resolve() explains that it needs --exclude
    if args.no_autotune:
        cfg.autotune = False
    resolve(cfg)  # a typo in a name or flag fails now, not after seconds of TensorFlow start-up
    tracked = _tracked_train(args, cfg)
    _quiet_keras()
    from cifarlab.training.signals import Interrupted
    from cifarlab.training.train import train

    try:
        run = train(cfg, on_epoch=tracked and tracked.epoch)
    except Interrupted as e:
        if tracked:
            tracked.finish({"event": "interrupted"})
        print(f"cifarlab: {e}", file=sys.stderr)
        return e.exit_code
    except BaseException:
        if tracked:
            tracked.finish({"event": "error"})
        raise
    if tracked:
        tracked.finish({"event": "done", "run_dir": str(run.run_dir), "metrics": run.metrics})
    m = run.metrics
    if not m:  # a multi-worker run's other workers: the chief reports
        print(f"worker finished {len(run.history)} epochs; the chief writes {run.run_dir}")
        return 0
    from cifarlab.evaluation.metrics import headline

    print(f"test accuracy {headline(m)}, test loss {m['test_loss']:.4f} after {m['epochs']} epochs "
          f"({m['train_seconds']:.0f} s training); run directory: {run.run_dir}")
    return 0


def _tracked_train(args, cfg):
    """train --track: the MLflow run of this training (checked before TensorFlow starts), or None."""
    if not args.track:
        return None
    from cifarlab.experiments.tracking import TrackedRun, parse_track

    return TrackedRun(parse_track(args.track, "cifarlab"), cfg)


def _experiment_kwargs(args) -> dict:
    from cifarlab.experiments.tracking import parse_track
    from cifarlab.training.overrides import parse_assignments

    return {"recipe": args.recipe, "data": args.data, "dataset": args.dataset, "limit": args.limit,
            "epochs": args.epochs, "overrides": parse_assignments(args.overrides), "workers": args.workers,
            "ray": args.ray, "cpus_per_trial": args.cpus_per_trial, "gpus_per_trial": args.gpus_per_trial,
            "retries": args.retries, "report": not args.no_report, "quiet": args.quiet, "pin_cores": args.pin_cores,
            "tracker": parse_track(args.track, Path(args.out or args.recipe).name)}


def cmd_sweep(args) -> int:
    from cifarlab.experiments.sweep import format_summary, parse_seeds, sweep

    kw = _experiment_kwargs(args)
    if args.coarse:
        kw["coarse"] = True
    summary = sweep(seeds=parse_seeds(args.seeds), out=args.out or f"sweeps/{args.recipe}", **kw)
    print(format_summary(summary))
    print(f"summary: {Path(summary['sweep']) / 'sweep.html'}")
    if summary.get("failed"):
        raise CifarlabError(f"{len(summary['failed'])} trial(s) failed: " + "; ".join(
            f"{k}: {v}" for k, v in summary["failed"].items()))
    return 0


def cmd_compare(args) -> int:
    from cifarlab.experiments.compare import compare

    r = compare(args.a, args.b, metric=args.metric, html=args.output)
    print(json.dumps(r, indent=2) if args.json else r["sentence"])
    if args.output and not args.json:
        print(f"wrote {args.output}")
    return 0


def cmd_tune(args) -> int:
    from cifarlab.experiments.tune import tune

    kw = _experiment_kwargs(args)
    if kw.pop("overrides"):
        raise CifarlabError("tune takes fixed values in the space file (name: value), not --set")
    best = tune(space_file=args.space, trials=args.trials, out=args.out or f"tunes/{args.recipe}",
                storage=args.storage, study_name=args.study, seed=args.seed, startup_trials=args.prune_after, **kw)
    if not best:
        print("no trial completed; nothing to recommend yet")
        return 0
    out = Path(args.out or f"tunes/{args.recipe}")
    print(f"best: trial {best['trial']}, val_accuracy {best['val_accuracy']:.4f}, {best['config']['overrides']}")
    print(f"wrote {out / 'results.csv'} and {out / 'best.yaml'} (cifarlab train --config {out / 'best.yaml'})")
    return 0


def cmd_runs(args) -> int:
    import pandas as pd

    from cifarlab.experiments.runs import runs_table

    table = runs_table(args.folder)
    if args.csv:
        from cifarlab.fileio import write_text

        write_text(args.csv, table.to_csv(index=False))
        print(f"wrote {args.csv}: {len(table)} runs")
    elif table.empty:
        print(f"no run directories under {args.folder}")
    else:
        with pd.option_context("display.max_rows", None, "display.max_columns", None, "display.width", 200,
                               "display.max_colwidth", 40):
            print(table.to_string(index=False))
    return 0


def cmd_evaluate(args) -> int:
    from cifarlab.data import local_source
    from cifarlab.evaluation.evaluate import evaluate
    from cifarlab.evaluation.metrics import format_report

    if args.data:
        local_source(args.data)
    _model_then_keras(args.target)
    metrics = evaluate(args.target, data=args.data)
    print(json.dumps(metrics, indent=2) if args.json else format_report(metrics))
    return 0


def cmd_predict(args) -> int:
    from cifarlab.data.images import probe
    from cifarlab.models.io import model_file
    from cifarlab.serving.predict import collect_images, predict, predict_files, write_predictions_csv

    if args.top_k < 1:
        raise CifarlabError(f"--top-k must be at least 1, not {args.top_k}")
    if args.batch_size < 1:
        raise CifarlabError(f"--batch-size must be at least 1, not {args.batch_size}")
    files = collect_images(args.images)
    if not files:
        raise CifarlabError("no image files found in " + ", ".join(args.images))
    model_file(args.model)
    if not args.out:  # a file that is missing or not an image stops this mode: say so before Keras starts
        for f in files:
            probe(f)
    _quiet_keras()
    if args.out:
        preds = predict_files(args.model, files, top=args.top_k, batch_size=args.batch_size, progress=not args.quiet)
        counts = write_predictions_csv(preds, args.out, top=args.top_k)
        print(f"wrote {args.out}: {counts['images']} images, {counts['errors']} unreadable")
        return 0
    for pred in predict(args.model, files, top=args.top_k):
        if args.json:
            print(json.dumps(pred.to_dict()))
        else:
            print(pred.source + ": " + ", ".join(f"{c} {p:.1%}" for c, p in pred.top))
    return 0


def _load(args, **kw):
    from cifarlab.data import load_dataset

    return load_dataset(args.data, dataset=args.dataset, coarse=args.coarse, validate_on="test", **kw)


def cmd_show(args) -> int:
    from cifarlab.evaluation.plots import plot_grid

    ds = _load(args)
    x, y = (ds.x_train, ds.y_train) if args.split == "train" else (ds.x_test, ds.y_test)
    bad = [i for i in args.indices if not 0 <= i < len(y)]
    if bad:
        raise CifarlabError(f"index {bad[0]} out of range: the {args.split} split has images 0-{len(y) - 1}")
    labels = [f"#{i}: {ds.class_names[y[i]]} ({y[i]})" for i in args.indices]
    if not args.output.lower().endswith(".png"):
        raise CifarlabError(f"--output must be a .png file, not {args.output}")
    plot_grid(x[args.indices], labels, Path(args.output))
    print(f"wrote {args.output}: " + ", ".join(labels))
    return 0


def cmd_info(args) -> int:
    from cifarlab.data.info import dataset_info, format_info

    info = dataset_info(_load(args))
    del info["splits"]["val"]  # with validate_on=test it repeats the test split
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def cmd_summary(args) -> int:
    from cifarlab.registry import MODELS

    if args.model in MODELS:
        if args.classes < 2:
            raise CifarlabError(f"--classes must be at least 2, not {args.classes}")
        _quiet_keras()
        model = MODELS[args.model].build(num_classes=args.classes)
    else:
        from cifarlab.models.io import load_model

        if not Path(args.model).exists():
            raise CifarlabError(f"{args.model!r} is neither a registered model ({', '.join(MODELS)}) nor a file")
        _model_then_keras(args.model)
        model, _ = load_model(args.model)
    model.summary()
    return 0


def cmd_list(args) -> int:
    from cifarlab.registry import MODELS, RECIPES

    print("models:")
    for m in MODELS.values():
        print(f"  {m.name:<10} {m.description}")
    print("recipes:")
    for r in RECIPES.values():
        print(f"  {r.name:<10} {r.description}")
    return 0


def cmd_report(args) -> int:
    from cifarlab.evaluation.report import build_report, check_run_dir

    if not Path(args.run).exists():
        check_run_dir(args.run)  # its one-line error, before Keras starts
    _quiet_keras()
    print(f"wrote {build_report(args.run, args.output, compare=args.compare, data=args.data)}")
    return 0


def cmd_serve(args) -> int:
    from cifarlab.serving.app import Limits, default_allowed_hosts, serve

    if not 0 <= args.port <= 65535:
        raise CifarlabError(f"--port must be 0-65535, not {args.port}")
    if args.max_upload_mb <= 0 or args.max_batch < 1 or args.max_wait_ms < 0 or args.max_lag_ms < 0:
        raise CifarlabError("--max-upload-mb must be > 0, --max-batch >= 1, --max-wait-ms and --max-lag-ms >= 0")
    counts = {"--max-connections": args.max_connections, "--max-inflight": args.max_inflight,
              "--max-queue": args.max_queue, "--max-image-pixels": args.max_image_pixels,
              "--max-request-pixels": args.max_request_pixels}
    times = {"--queue-timeout-ms": args.queue_timeout_ms, "--header-timeout": args.header_timeout,
             "--body-timeout": args.body_timeout}
    for flag, value in {**counts, **times}.items():
        if not value > 0:
            raise CifarlabError(f"{flag} must be > 0, not {value}")
    hosts = default_allowed_hosts(args.host) if args.allowed_hosts is None else tuple(
        h.strip().lower() for h in args.allowed_hosts.split(",") if h.strip())
    if not hosts or any("*" in h[1:] or (h.startswith("*") and h != "*" and not h.startswith("*."))
                        for h in hosts):
        raise CifarlabError(f"--allowed-hosts: give names like 'example.com', '*.example.com' or '*', "
                            f"not {args.allowed_hosts!r}")
    limits = Limits(max_bytes=int(args.max_upload_mb * 1024 * 1024), max_batch=args.max_batch,
                    max_wait_s=args.max_wait_ms / 1000, max_queue=args.max_queue,
                    queue_timeout_s=args.queue_timeout_ms / 1000, max_image_pixels=args.max_image_pixels,
                    max_request_pixels=args.max_request_pixels, max_inflight=args.max_inflight,
                    max_lag_s=args.max_lag_ms / 1000 or None,
                    body_timeout_s=args.body_timeout, allowed_hosts=hosts)
    _model_then_keras(args.model)
    serve(args.model, host=args.host, port=args.port, limits=limits, max_connections=args.max_connections,
          header_timeout_s=args.header_timeout, announce=lambda line: print(line, flush=True))
    return 0


def cmd_export(args) -> int:
    from cifarlab.serving.export import export

    _model_then_keras(args.model)
    r = export(args.model, args.format, args.output, data=args.data)
    if args.json:
        print(json.dumps(r, indent=2))
    else:
        print(f"wrote {r['path']} ({r['format']}, {r['bytes']:,} bytes); checked on {r['images']} test images: "
              f"top-1 agrees {r['top1_agreement']:.2%} (need {r['required']['top1_agreement']:.1%}), largest "
              f"probability difference {r['max_abs_prob_diff']:.1e} (need <= {r['required']['max_abs_prob_diff']:g})")
    return 0


def cmd_audit(args) -> int:
    from cifarlab.audit.run import AuditConfig, audit

    cfg = AuditConfig(data=args.data, dataset=args.dataset, coarse=args.coarse, recipe=args.recipe, folds=args.folds,
                      epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, limit=args.limit, out=args.out,
                      quiet=args.quiet, report=not args.no_report)
    s = audit(cfg)
    c, t = s["counts"], s["test"]
    without = "" if t["accuracy_without_leaked"] is None else f", {t['accuracy_without_leaked']:.4f} without them"
    print(f"{c['label']:,} label issues, {c['leak']:,} train/test leaks, {c['duplicate']:,} duplicates, "
          f"{c['outlier']:,} outliers, {c['blank']:,} blank images; test accuracy {t['accuracy']:.4f} with "
          f"{t['leaked_images']:,} leaked test images{without}; findings: {Path(args.out) / 'findings.csv'}")
    return 0


def cmd_launch(args) -> int:
    from cifarlab.launch import launch

    return launch(args.workers, args.cmd, port=args.port, shared_network=args.shared_network)


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict, "show": cmd_show,
            "info": cmd_info, "summary": cmd_summary, "list": cmd_list, "report": cmd_report,
            "serve": cmd_serve, "export": cmd_export, "launch": cmd_launch, "audit": cmd_audit,
            "sweep": cmd_sweep, "compare": cmd_compare, "tune": cmd_tune, "runs": cmd_runs}
