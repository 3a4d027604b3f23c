"""Stop training cleanly on SIGINT (Ctrl-C) or SIGTERM (``kill``, a scheduler, Kubernetes).

While :class:`StopRequest` is active, the first SIGINT or SIGTERM only records
itself: the training step in progress finishes, the checkpoint callback saves
and raises :class:`Interrupted`, and the command exits 130 (SIGINT) or 143
(SIGTERM) with one line saying how to resume. A second signal stops at once,
the Unix way (the last checkpoint on disk is still good: every write is atomic).
"""

from __future__ import annotations

import signal
import threading

HANDLED = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
    """Training stopped on a signal after saving a checkpoint; ``exit_code`` is 128 + signal."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


class StopRequest:
    """Context manager: turns the first SIGINT/SIGTERM into ``self.signum``."""

    def __init__(self):
        self.signum: int | None = None
        self._saved: dict = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def _handle(self, signum, frame):
        if self.signum is not None:  # second signal: the user means it
            self.__exit__(None, None, None)
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            raise SystemExit(128 + signum)
        self.signum = signum

    def __enter__(self) -> "StopRequest":
        # Signal handlers can only be set from the main thread (tests may train elsewhere).
        if threading.current_thread() is threading.main_thread():
            for s in HANDLED:
                self._saved[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> bool:
        for s, old in self._saved.items():
            signal.signal(s, old)
        self._saved.clear()
        return False
