"""A checkpoint's saved state, read without Keras: where it lies, what it holds, where it stands in words.

:mod:`cifarlab.training.checkpoint` writes and resumes checkpoints (and imports Keras, so its backend);
``cifarlab launch`` only reads where its workers' checkpoint stands after passing a signal on, and
should not spend seconds importing TensorFlow to say so. ``checkpoint`` re-exports these names.
"""

from __future__ import annotations

import json
from pathlib import Path

from cifarlab.errors import CifarlabError

FOLDER = "checkpoint"
FILE = "latest.weights.h5"
STATE_ATTR = "cifarlab_state"
# The fast loop's trainers, by the "trainer" of their checkpoints: the JSON type of their own augmentation
# generator's state (TensorFlow's as a list, numpy's bit-generator state as a dict).
AUGMENT_RNG = {"fast": list, "portable": dict}


def path(run_dir: str | Path) -> Path:
    return Path(run_dir) / FOLDER / FILE


def read_state(run_dir: str | Path) -> dict | None:
    """The saved training state of a run directory, or None when it has no checkpoint."""
    import h5py

    p = path(run_dir)
    if not p.is_file():
        return None
    try:
        with h5py.File(p, "r") as f:
            state = json.loads(f.attrs[STATE_ATTR])
    except (OSError, KeyError, ValueError) as e:
        raise CifarlabError(f"{p}: unreadable checkpoint ({e}); move it away to start the run afresh") from None
    problem = _state_problem(state)
    if problem:
        raise CifarlabError(f"{p}: unreadable checkpoint ({problem}); move it away to start the run afresh")
    return state


def _state_problem(state) -> str | None:
    """What is wrong with a checkpoint's JSON state (words), or None: the fields every resume reads."""
    def whole(v):
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    if not isinstance(state, dict):
        return "its state is not a JSON object"
    if not whole(state.get("epoch")) or not whole(state.get("step")):
        return "epoch and step must be whole numbers"
    history = state.get("history")
    if not isinstance(history, list) or not all(isinstance(row, dict) for row in history):
        return "history must be a list of epochs"
    if state.get("trainer") in AUGMENT_RNG:  # the fast loop's (training/loop.py), whichever trainer ran it
        kinds = {"shuffle_rng": dict, "sums": list, "steps_per_epoch": int,
                 "augment_rng": AUGMENT_RNG[state["trainer"]]}
        wrong = [k for k, kind in kinds.items() if not isinstance(state.get(k), kind)]
        if wrong:
            return f"{', '.join(wrong)} missing or of the wrong type"
    rng = state.get("rng")  # Keras' fit path; a resume without it is refused where it is read
    if rng is not None and not (isinstance(rng, dict) and isinstance(rng.get("numpy"), list)
                                and len(rng["numpy"]) == 5 and isinstance(rng.get("python"), list)
                                and len(rng["python"]) == 3):
        return "rng must hold the numpy and Python generator states"
    return None


def where(state: dict | None) -> str:
    """Where a saved state stands, in words: "after epoch 2", "epoch 3, step 40" or "none yet"."""
    if not state:
        return "none yet"
    return (f"after epoch {state['epoch']}" if not state["step"]
            else f"epoch {state['epoch'] + 1}, step {state['step']}")
