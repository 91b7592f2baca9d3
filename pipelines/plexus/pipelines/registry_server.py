"""A throwaway PostgreSQL cluster and an MLflow tracking server on it, on this machine.

What a team runs as a shared service (`infra/compose.yaml` starts the same pair in
containers), started here from the Debian `postgresql` package for tests and local trials:

    python -m plexus.pipelines.registry_server --root runs/registry   # prints the URI; Ctrl-C stops
    MLFLOW_TRACKING_URI=http://127.0.0.1:<port> plexus run retrieval_movielens promote.gate=true

`PostgresCluster` initdb's a cluster in a fresh folder (as the `postgres` user when run as
root: the server refuses to run as root), listens on 127.0.0.1 only with trust authentication
(never expose it), and creates one database. `MlflowServer` runs `mlflow server` with that
database as the backend store and a local folder as the artifact root, served through the
server (`--artifacts-destination`), so clients need only the HTTP URI. Both stop their whole
process tree; `registry_server(root)` starts and stops the pair as a context manager.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

from plexus.platform.errors import PlexusError

__all__ = ["MlflowServer", "PostgresCluster", "registry_server", "postgres_bindir"]

INSTALL_HINT = "install PostgreSQL: `make postgres` (runs `apt-get install -y postgresql`)"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def postgres_bindir() -> Path:
    """The folder of `initdb` / `pg_ctl`: $PG_BINDIR, the newest /usr/lib/postgresql/*/bin
    (Debian keeps them off PATH), or PATH."""
    candidates = [os.environ.get("PG_BINDIR", "")]
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_major, reverse=True)
    found = shutil.which("initdb")
    candidates.append(str(Path(found).resolve().parent) if found else "")
    for folder in candidates:
        if folder and (Path(folder) / "initdb").is_file() and (Path(folder) / "pg_ctl").is_file():
            return Path(folder)
    raise PlexusError(f"no PostgreSQL server binaries (initdb, pg_ctl) found; {INSTALL_HINT}")


def _major(path: str) -> int:
    try:
        return int(Path(path).parent.name)
    except ValueError:
        return 0


class PostgresCluster:
    """A PostgreSQL cluster in `root/pgdata` on 127.0.0.1:`port`, one database `database`.

    As root the cluster's folder is owned by, and the server runs as, `user` (default: the
    `postgres` account the Debian package creates); otherwise as the current user.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        port: int | None = None,
        database: str = "mlflow",
        role: str = "plexus",
        user: str = "postgres",
    ) -> None:
        self.bindir = postgres_bindir()
        self.root = Path(root)
        self.port = port or free_port()
        self.database, self.role = database, role
        self.run_as = user if os.geteuid() == 0 else None
        self.data = self.root / "pgdata"
        self.log = self.root / "postgres.log"

    @property
    def uri(self) -> str:
        """The SQLAlchemy URI of the database (what `mlflow server --backend-store-uri` takes).
        The driver is named: SQLAlchemy 2.1 reads a bare `postgresql://` as psycopg 3, while
        the project installs psycopg2-binary."""
        return f"postgresql+psycopg2://{self.role}@127.0.0.1:{self.port}/{self.database}"

    def _cmd(self, tool: str, *args: str) -> list[str]:
        cmd = [str(self.bindir / tool), *args]
        return ["runuser", "-u", self.run_as, "--", *cmd] if self.run_as else cmd

    def _run(self, tool: str, *args: str, timeout: float = 300) -> None:
        done = subprocess.run(
            self._cmd(tool, *args), capture_output=True, text=True, timeout=timeout
        )
        if done.returncode != 0:
            tail = self.log.read_text()[-2000:] if self.log.is_file() else ""
            raise PlexusError(
                f"{tool} {' '.join(args[:2])}... failed ({done.returncode}): "
                f"{(done.stderr or done.stdout).strip()[-2000:]}\n{tail}"
            )

    def start(self) -> PostgresCluster:
        """initdb (first time), start the server, create the database; returns self."""
        self.root.mkdir(parents=True, exist_ok=True)
        if self.run_as:
            try:
                account = pwd.getpwnam(self.run_as)
            except KeyError:
                raise PlexusError(
                    f"running as root, PostgreSQL needs an unprivileged account to run as; no "
                    f"user {self.run_as!r} here: {INSTALL_HINT} (it creates `postgres`)"
                ) from None
            os.chown(self.root, account.pw_uid, account.pw_gid)
        fresh = not (self.data / "PG_VERSION").is_file()
        if fresh:
            self._run(
                "initdb", "-D", str(self.data), "-U", self.role, "--auth=trust",
                "-E", "UTF8", "--locale=C", "--no-instructions",
            )  # fmt: skip
        options = (
            f"-p {self.port} -h 127.0.0.1 -k {self.data} -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off"
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")
        if fresh:
            self._run(
                "createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.role, self.database
            )
        return self

    def stop(self) -> None:
        """Stop the server (fast shutdown); a no-op if it is not running."""
        if not (self.data / "postmaster.pid").is_file():
            return
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop", timeout=60)
        except (PlexusError, subprocess.TimeoutExpired):
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


class MlflowServer:
    """`mlflow server` on 127.0.0.1:`port` over `backend_store_uri`, artifacts in `artifacts`
    served through it. Its job executor is off (a registry needs no job consumers)."""

    def __init__(
        self,
        backend_store_uri: str,
        artifacts: str | Path,
        *,
        port: int | None = None,
        log: str | Path | None = None,
    ) -> None:
        self.backend_store_uri = backend_store_uri
        self.artifacts = Path(artifacts)
        self.port = port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log = Path(log) if log else self.artifacts.parent / "mlflow-server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *, timeout: float = 300) -> MlflowServer:
        """Start and wait until /health answers (the first start migrates the schema: on a
        loaded machine that takes a minute or more); returns self."""
        self.artifacts.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1",
            "--port", str(self.port), "--workers", "1",
            "--backend-store-uri", self.backend_store_uri,
            "--artifacts-destination", str(self.artifacts),
        ]  # fmt: skip
        env = {
            **os.environ,
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "DO_NOT_TRACK": "true",
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        }
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.proc = None
                raise PlexusError(f"mlflow server exited:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as answer:
                    if answer.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise PlexusError(f"mlflow server not healthy after {timeout:.0f} s; see {self.log}")

    def stop(self) -> None:
        """Stop the server and every process it started (its process group)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.proc = None


@contextlib.contextmanager
def registry_server(
    root: str | Path | None = None, *, port: int | None = None
) -> Iterator[MlflowServer]:
    """PostgreSQL + MLflow server under `root` (a temporary folder, removed after, if None);
    yields the running `MlflowServer` (its `.uri` is the tracking URI). Both stop on exit."""
    with contextlib.ExitStack() as stack:
        if root is None:
            root = stack.enter_context(tempfile.TemporaryDirectory(prefix="plexus-registry-"))
        folder = Path(root)
        # Its own folder, outside `root`'s parents' permissions: as root the cluster runs as
        # `postgres`, which must reach it (pytest's and many home folders are 0700).
        pg_root = Path(tempfile.mkdtemp(prefix="plexus-pg-"))
        stack.callback(shutil.rmtree, pg_root, True)
        cluster = PostgresCluster(pg_root)
        stack.callback(cluster.stop)
        cluster.start()
        server = MlflowServer(cluster.uri, folder / "artifacts", port=port)
        stack.callback(server.stop)
        yield server.start()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m plexus.pipelines.registry_server",
        description="Run an MLflow tracking server on a throwaway PostgreSQL until Ctrl-C.",
    )
    parser.add_argument("--root", help="folder for the artifacts and logs (default: a temp dir)")
    parser.add_argument("--port", type=int, help="MLflow server port (default: a free one)")
    args = parser.parse_args(argv)
    try:
        with registry_server(args.root, port=args.port) as server:
            print(f"MLFLOW_TRACKING_URI={server.uri}", flush=True)
            print(f"backend store: {server.backend_store_uri}; Ctrl-C stops both", flush=True)
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
            with contextlib.suppress(KeyboardInterrupt):
                while server.proc is not None and server.proc.poll() is None:
                    time.sleep(1)
    except PlexusError as exc:
        print(f"registry_server: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
