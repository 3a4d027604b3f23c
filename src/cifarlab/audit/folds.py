"""Cross-fitting: out-of-sample probabilities and embeddings for every training image.

The training images are split into ``k`` stratified folds (fixed seed); for each fold a net is
trained by the recipe's fast loop (:class:`cifarlab.training.fast.FastTrainer`, the trainer
``cifarlab train`` uses for ``fast``/``quick``) on the other ``k - 1`` folds, and predicts the
held-out fold. Each fold's result is saved as ``FOLDS_DIR/fold_K.npz`` (atomically) as soon as it
is trained, so a killed audit reruns only the folds that are missing.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cifarlab.errors import CifarlabError
from cifarlab.fileio import atomic_path

EMBED_LAYER = "pool"  # the fast nets' global pool: the penultimate layer, before the classifier
EMBED_BATCH = 1000


def check_k(k) -> None:
    if not isinstance(k, int) or isinstance(k, bool) or k < 2:
        raise CifarlabError(f"--folds must be a whole number of at least 2, not {k!r}")


def check_folds(y: np.ndarray, k: int, class_names: list[str]) -> None:
    """One-line errors for a ``k`` that cannot cross-fit ``y`` (int ``(N,)``)."""
    check_k(k)
    if len(y) < 2 * k:
        raise CifarlabError(f"{len(y)} training images are too few for {k} folds (need at least {2 * k})")
    counts = np.bincount(y, minlength=len(class_names))
    small = [(class_names[c], int(n)) for c, n in enumerate(counts) if n < k]
    if small:
        name, n = small[0]
        raise CifarlabError(f"class {name!r} has {n} training image{'s' if n != 1 else ''}, fewer than the "
                            f"{k} folds; use --folds {max(2, n)} or more images" if n >= 2 else
                            f"class {name!r} has {n} training image{'s' if n != 1 else ''}, too few to cross-fit "
                            f"(each class needs at least {k}, one per fold)")


def assign_folds(y: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """int64 ``(N,)`` fold of each image, 0..k-1: each class dealt round-robin over the folds in an
    order shuffled by ``seed``, so every fold holds ``n_c / k`` (rounded) images of class ``c``."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(y), dtype=np.int64)
    start = 0
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        # Each class starts where the last one stopped, so the folds' sizes differ by at most one.
        fold[members] = (start + np.arange(len(members))) % k
        start = (start + len(members)) % k
    return fold


@dataclass
class FoldResult:
    """One fold: ``held_out`` int64 positions, ``probs`` float32 ``(len(held_out), classes)`` out of
    sample; ``emb_train``/``emb_test`` float16 ``(N, d)`` embeddings of every train / test image by
    this fold's net; ``train_probs`` float16 ``(N, classes)`` this net's probabilities for every
    training image (in sample but for the held-out fold); ``test_probs`` float32 ``(N_test, classes)``;
    ``seconds`` of training."""

    fold: int
    held_out: np.ndarray
    probs: np.ndarray
    emb_train: np.ndarray
    emb_test: np.ndarray
    train_probs: np.ndarray
    test_probs: np.ndarray
    seconds: float


FORMAT = 2  # fold files of format 1 had no train_probs


def fingerprint(settings: dict, y: np.ndarray, x: np.ndarray) -> str:
    """What a fold file must have been made from to be reused: settings, labels and a pixel sample."""
    h = hashlib.sha256(json.dumps({**settings, "fold_format": FORMAT}, sort_keys=True, default=str).encode())
    h.update(np.ascontiguousarray(y, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(x[:: max(1, len(x) // 512)]).tobytes())
    return h.hexdigest()[:32]


def fold_path(folds_dir: Path, k: int) -> Path:
    return folds_dir / f"fold_{k}.npz"


def save_fold(path: Path, r: FoldResult, key: str) -> None:
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, key=np.array(key), fold=np.array(r.fold), held_out=r.held_out, probs=r.probs,
                 emb_train=r.emb_train, emb_test=r.emb_test, train_probs=r.train_probs,
                 test_probs=r.test_probs, seconds=np.array(r.seconds))


def load_fold(path: Path, key: str) -> FoldResult | None:
    """The fold saved at ``path`` if it belongs to this audit (same ``key``); None if there is none.

    A fold file of other settings or data is an error rather than silently retrained over: it is the
    user's work (minutes of training) and belongs to another audit.
    """
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            saved_key = str(z["key"])
            # The key first: a fold file of another audit (or an older format) is not "damaged".
            r = None if saved_key != key else FoldResult(
                int(z["fold"]), z["held_out"], z["probs"], z["emb_train"], z["emb_test"], z["train_probs"],
                z["test_probs"], float(z["seconds"]))
    except Exception as e:  # noqa: BLE001 - numpy raises many types for a damaged file
        raise CifarlabError(f"{path}: damaged fold file ({type(e).__name__}); delete it to retrain that fold") from None
    if r is None:
        raise CifarlabError(f"{path} is from an audit with other settings or data; "
                            "choose another -o folder or delete its folds/ to start afresh")
    return r


def embedder(model):
    """A function: uint8 images ``(N, 32, 32, 3)`` -> (float16 ``(N, d)`` outputs of the penultimate
    layer, float16 ``(N, classes)`` probabilities), from one forward pass."""
    import keras
    import tensorflow as tf

    view = keras.Model(model.inputs, [model.get_layer(EMBED_LAYER).output, model.output])
    call = tf.function(lambda xb: [tf.cast(t, tf.float32) for t in view(tf.cast(xb, tf.float32), training=False)],
                       autograph=False, input_signature=[tf.TensorSpec([None, *model.input_shape[1:]], tf.uint8)])

    def embed(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        emb = np.empty((len(x), view.output_shape[0][-1]), dtype=np.float16)
        probs = np.empty((len(x), view.output_shape[1][-1]), dtype=np.float16)
        for i in range(0, len(x), EMBED_BATCH):
            e, p = call(tf.constant(x[i:i + EMBED_BATCH]))
            emb[i:i + EMBED_BATCH], probs[i:i + EMBED_BATCH] = e.numpy(), p.numpy()
        return emb, probs

    return embed


def fold_trainer(k: int, fold: np.ndarray, x: np.ndarray, y: np.ndarray, recipe, spec, num_classes: int,
                 seed: int):
    """Fold ``k``'s trainer, not yet fitted: seeded ``seed + k``, a new ``spec`` net, on the images of every
    other fold. Returns (``FastTrainer``, int64 positions of the held-out fold); the net is ``trainer.model``.
    The one place that says how a fold trains, for the audit and for the benchmarks that probe it."""
    import keras

    from cifarlab.training.fast import FastTrainer

    keras.utils.set_random_seed(seed + k)
    train_idx, held_out = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
    model = spec.build(num_classes=num_classes)
    return FastTrainer(model, recipe, x[train_idx], y[train_idx], seed=seed + k), held_out


def train_fold(k: int, fold: np.ndarray, x: np.ndarray, y: np.ndarray, x_test: np.ndarray, recipe, spec,
               num_classes: int, seed: int) -> FoldResult:
    """Train on every fold but ``k``; predict fold ``k`` (with the recipe's test-time augmentation)."""
    trainer, held_out = fold_trainer(k, fold, x, y, recipe, spec, num_classes, seed)
    model = trainer.model
    t0 = time.perf_counter()
    trainer.fit(recipe.epochs)  # leaves the weight average (recipe.ema_decay) in the model
    seconds = time.perf_counter() - t0
    probs = trainer.predict_tta(x[held_out]).astype(np.float32)
    embed = embedder(model)
    (emb_train, train_probs), (emb_test, test_probs) = embed(x), embed(x_test)
    test_probs = test_probs.astype(np.float32)  # the same plain pass as trainer.predict, not run twice
    r = FoldResult(k, held_out.astype(np.int64), probs, emb_train, emb_test, train_probs, test_probs, round(seconds, 2))
    # The trainer's compiled functions hold the fold's training images as constants: let them go
    # (not keras.backend.clear_session: it would also reset the dtype policy the folds train under).
    del trainer, model, embed
    gc.collect()
    return r


@dataclass
class CrossFit:
    """All folds together: ``probs`` float32 ``(N, classes)`` out of sample for every training image,
    ``insample_probs`` float32 ``(N, classes)`` the mean of the ``k - 1`` nets that trained on each
    image, ``emb_train`` float32 ``(N, folds * d)`` and ``emb_test`` ``(N_test, folds * d)`` (each fold's
    embedding L2-normalised, then side by side), ``test_probs`` the folds' mean on the test set,
    ``trained`` the folds trained by this call (the others were read back)."""

    fold: np.ndarray
    probs: np.ndarray
    insample_probs: np.ndarray
    emb_train: np.ndarray
    emb_test: np.ndarray
    test_probs: np.ndarray
    seconds: list[float]
    trained: list[int]


def pool(folds, n: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """float32 ``(n, num_classes)`` twice: each image's out-of-fold probabilities, and the mean of the
    ``k - 1`` nets that trained on it. ``folds``: one ``(held_out, probs, train_probs)`` per fold, as
    in :class:`FoldResult`."""
    probs = np.zeros((n, num_classes), dtype=np.float32)
    insample = np.zeros((n, num_classes), dtype=np.float32)
    for held_out, held_out_probs, train_probs in folds:
        probs[held_out] = held_out_probs
        insample += train_probs
        insample[held_out] -= train_probs[held_out]
    return probs, insample / (len(folds) - 1)


def _normalised(e: np.ndarray) -> np.ndarray:
    e = e.astype(np.float32)
    return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)


def cross_fit(x, y, x_test, k: int, recipe, spec, num_classes: int, folds_dir: Path, key: str, seed: int = 0,
              quiet: bool = False) -> CrossFit:
    """Train or read back each of ``k`` folds (see the module docstring), with a progress line per fold."""
    import tensorflow as tf

    # Each fold's new trainer traces its functions afresh, which TensorFlow warns of as "retracing".
    tf.get_logger().setLevel("ERROR")
    fold = assign_folds(y, k, seed)
    results, trained = [], []
    t_start = time.perf_counter()
    for j in range(k):
        r = load_fold(fold_path(folds_dir, j), key)
        if r is None:
            r = train_fold(j, fold, x, y, x_test, recipe, spec, num_classes, seed)
            save_fold(fold_path(folds_dir, j), r, key)
            trained.append(j)
        results.append(r)
        if not quiet:
            _progress(j + 1, k, r, j in trained, y, time.perf_counter() - t_start, len(trained))
    probs, insample = pool([(r.held_out, r.probs, r.train_probs) for r in results], len(y), num_classes)
    return CrossFit(
        fold=fold, probs=probs, insample_probs=insample,
        emb_train=np.concatenate([_normalised(r.emb_train) for r in results], axis=1),
        emb_test=np.concatenate([_normalised(r.emb_test) for r in results], axis=1),
        test_probs=np.mean([r.test_probs for r in results], axis=0),
        seconds=[r.seconds for r in results], trained=trained)


def _progress(done: int, k: int, r: FoldResult, trained: bool, y, elapsed: float, n_trained: int) -> None:
    width = 20
    filled = math.floor(width * done / k)
    acc = float((r.probs.argmax(1) == y[r.held_out]).mean())
    how = f"trained in {r.seconds:.0f} s" if trained else "read back from its fold file"
    left = ""
    if trained and done < k:
        left = f", about {elapsed / n_trained * (k - done) / 60:.1f} min to go"
    print(f"fold {done}/{k} [{'#' * filled}{'.' * (width - filled)}] {how}, held-out accuracy {acc:.3f}{left}",
          file=sys.stdout, flush=True)
