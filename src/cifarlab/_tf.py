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


class _WithoutJax:
    """An import finder that refuses ``jax``: importing TensorFlow imports JAX where it is installed,
    only for a TFLite converter of JAX functions that cifarlab never calls (0.8 CPU s a command)."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "jax":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)


def import_quietly() -> None:
    if "keras" in sys.modules:
        return
    from cifarlab.backend import default

    # On TensorFlow only, and only for the duration of this import: `import jax` works again after it.
    hide_jax = default() == "tensorflow" and "jax" not in sys.modules
    finder = _WithoutJax()
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        if hide_jax:
            sys.meta_path.insert(0, finder)
        import keras  # noqa: F401
    finally:
        if finder in sys.meta_path:
            sys.meta_path.remove(finder)
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
