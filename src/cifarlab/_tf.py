"""Import Keras and its backend without the backend's start-up chatter on the terminal.

TensorFlow's C++ core prints informational lines (oneDNN notices, CPU feature
lists) through absl before any Python setting can silence them. The command line
imports Keras (which imports its backend: TensorFlow, JAX or PyTorch, see
:mod:`cifarlab.backend`) with file descriptor 2 pointed at /dev/null for the duration
of the import; Python exceptions are unaffected and still reach the user.
"""

from __future__ import annotations

import os
import sys


def import_quietly() -> None:
    if "keras" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import keras  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
