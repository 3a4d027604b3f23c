"""A local worker process: ``python -m cifarlab.experiments.worker`` runs one trial.

Protocol with :class:`cifarlab.experiments.execution.LocalPool`, one JSON object per line:
the job arrives on stdin; after each epoch the worker writes ``{"event": "epoch", "row": ...}``
on its protocol channel (the original stdout; anything else printed goes to stderr, the
trial's log) and reads one line back, ``go`` or ``stop``; the last line it writes is the
result of :func:`cifarlab.experiments.trial.run_trial`. A worker whose driver is gone
(stdin closed) stops at its next epoch.
"""

from __future__ import annotations

import json
import os
import sys


def main() -> int:
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray prints (TensorFlow, Keras) go to the log, not into the protocol
    sys.stdout = os.fdopen(1, "w", buffering=1)
    job = json.loads(sys.stdin.readline())

    def report(row: dict) -> bool:
        proto.write(json.dumps({"event": "epoch", "row": row}) + "\n")
        return sys.stdin.readline().strip() == "go"

    from cifarlab.experiments.trial import run_trial

    result = run_trial(job, report)
    proto.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
