"""The service as a child process on 127.0.0.1, as users run it: start, wait until ready, ask, stop.

`plexus demo`, the serving benchmark and the tests run `python -m plexus.serving` through this
one class rather than each starting and polling it their own way.

Example:
    >>> with ServiceProcess("plexus-demo@champion", log=Path("service.log")) as service:
    ...     service.wait_ready()
    ...     status, answer = service.post("/v1/retrieve", {"user_id": 7, "k": 10})
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["ServiceProcess", "free_port"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServiceProcess:
    """`python -m plexus.serving --model MODEL` on a free loopback port, its output in `log`.

    `model`: NAME@ALIAS, NAME/VERSION or a bundle folder; `extra`: more service options.
    The process gets its own session, so `stop` also ends anything it started.
    """

    def __init__(
        self,
        model: str,
        *,
        log: Path,
        tracking_uri: str | None = None,
        cache_dir: Path | None = None,
        poll_interval: float | None = None,
        extra: Sequence[str] = (),
        cwd: Path | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = Path(log)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "plexus.serving", "--model", model, "--port", str(self.port)]
        if tracking_uri:
            cmd += ["--tracking-uri", tracking_uri]
        if cache_dir is not None:
            cmd += ["--cache-dir", str(cache_dir)]
        if poll_interval is not None:
            cmd += ["--poll-interval", str(poll_interval)]
        self._out = self.log.open("w")
        self.proc = subprocess.Popen(
            [*cmd, *extra],
            cwd=cwd,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def __enter__(self) -> ServiceProcess:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _exited(self) -> RuntimeError:
        tail = self.log.read_text(errors="replace")[-3000:]
        return RuntimeError(f"the service exited with status {self.proc.returncode}:\n{tail}")

    def readiness(self) -> dict[str, Any] | None:
        """`/readyz`'s answer once ready (model, version), else None; raises if it exited."""
        if self.proc.poll() is not None:
            raise self._exited()
        try:
            with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as answer:
                return dict(json.loads(answer.read()))
        except (OSError, ValueError):
            return None

    def wait_ready(self, timeout: float = 120.0, *, version: str | None = None) -> dict[str, Any]:
        """Block until `/readyz` answers 200 (on `version`, if given); its answer."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready = self.readiness()
            if ready is not None and (version is None or str(ready.get("version")) == version):
                return ready
            time.sleep(0.1)
        wanted = f" on version {version}" if version else ""
        raise TimeoutError(
            f"the service was not ready{wanted} after {timeout:.0f} s; see {self.log}"
        )

    def post(self, path: str, body: Any, timeout: float = 30.0) -> tuple[int, Any]:
        """POST `body` as JSON to `path`: (HTTP status, decoded JSON answer)."""
        request = urllib.request.Request(
            f"{self.url}{path}",
            data=json.dumps(body).encode(),
            headers={"content-type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (a graceful drain), then SIGKILL to the whole session after `timeout`."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=timeout)
        self._out.close()
