"""Start a real `cifarlab serve` in a subprocess on 127.0.0.1 (a free port) for tests and benchmarks."""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import requests


class Server:
    def __init__(self, model: str | os.PathLike, *args: str, log: Path, timeout: float = 180.0):
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
        self.log = log
        self._log_file = open(log, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cifarlab", "serve", str(model), "--host", "127.0.0.1", "--port", "0", *args],
            stdout=subprocess.PIPE, stderr=self._log_file, env=env)
        self.url = self._wait_for_address(timeout)
        self.session = requests.Session()
        self.session.trust_env = False  # loopback only: never through a proxy from the environment
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.session.get(self.url + "/health", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"server did not become healthy; log:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)

    def _wait_for_address(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        line = b""
        while time.monotonic() < deadline and self.proc.poll() is None:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.5)
            if ready:
                line = self.proc.stdout.readline()
                m = re.search(rb"http://[\d.]+:\d+", line)
                if m:
                    return m.group().decode()
        self.stop()
        raise RuntimeError(f"server did not announce its address ({line!r}); log:\n{self.log.read_text()[-3000:]}")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_file.close()
        if self.proc.stdout:
            self.proc.stdout.close()


class InProcessServer:
    """A FastAPI app on a real uvicorn server in a thread of this process, on 127.0.0.1 (a free port).

    For apps built around a stub model (slow, failing) that a subprocess cannot be given.
    ``stop()`` asks uvicorn to shut down as SIGTERM would: in-flight requests finish first.
    """

    def __init__(self, app, **config):
        import socket
        import threading

        import uvicorn

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_config=None, **config))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        self.session = requests.Session()
        self.session.trust_env = False
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("in-process server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()
        self.session.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
