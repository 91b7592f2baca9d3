"""The registry goes away while the service runs: it keeps serving the loaded version, stays
ready, backs off its polling, and follows the alias again once the registry is back.

A real MLflow tracking server (SQLite behind it, artifacts proxied) in a subprocess on
127.0.0.1, stopped and restarted on the same port; the real service polls it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import Service
from plexus.serving.process import free_port

pytestmark = pytest.mark.slow


class MlflowServer:
    def __init__(self, root: Path, port: int) -> None:
        self.root, self.port = root, port
        self.uri = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = (self.root / "server.log").open("ab")
        cmd = [
            sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1",
            "--port", str(self.port), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
            "--artifacts-destination", str(self.root / "artifacts"),
        ]  # fmt: skip
        # No job executor: its consumer processes are not needed for a registry.
        env = {
            **os.environ,
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        }
        self.proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        deadline = time.monotonic() + 300  # a loaded 2-core machine takes minutes
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.uri}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.3)
        raise TimeoutError((self.root / "server.log").read_text()[-3000:])

    def stop(self) -> None:
        """Stop the server and every process it started (uvicorn, its job consumers)."""
        if self.proc is not None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
            self.proc = None


def _register(uri: str, name: str, folder: Path) -> str:
    import mlflow
    from plexus.pipelines.retrieval.job import register_bundle

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    experiment = mlflow.get_experiment_by_name("outage") or mlflow.create_experiment("outage")
    experiment_id = experiment if isinstance(experiment, str) else experiment.experiment_id
    with mlflow.start_run(experiment_id=experiment_id):
        return register_bundle(folder, name, alias="champion")


def _metric(service: Service, name: str) -> float:
    text = httpx.get(f"{service.url}/metrics", timeout=5).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


@pytest.mark.reliability(
    "fault", "registry server stopped while serving: serving and ready, recovers"
)
def test_service_survives_a_registry_outage(bundle_dirs, tmp_path: Path) -> None:
    server = MlflowServer(tmp_path, free_port())
    service = None
    try:
        server.start()
        v1 = _register(server.uri, "outage", bundle_dirs["v1"])
        service = Service(
            "outage@champion",
            tracking_uri=server.uri,
            cache=tmp_path / "svc",
            extra=("--poll-interval", "0.5"),
        )
        assert service.wait_ready(timeout=120)["version"] == v1

        server.stop()
        time.sleep(6)  # several polls fail meanwhile
        for _ in range(20):
            answer = httpx.post(f"{service.url}/v1/retrieve", json={"user_id": 1, "k": 5})
            assert answer.status_code in (200, 404), answer.text
        ready = httpx.get(f"{service.url}/readyz", timeout=5)
        assert ready.status_code == 200 and ready.json()["version"] == v1
        failed = _metric(service, "plexus_registry_poll_errors_total")
        assert 2 <= failed < 12  # polled, and backed off (0.5 s polls would fail ~12 times)
        assert "next in" in service.log.read_text()

        server.start()
        v2 = _register(server.uri, "outage", bundle_dirs["v2"])
        deadline = time.monotonic() + 90
        version = v1
        while time.monotonic() < deadline and version != v2:
            time.sleep(0.5)
            version = httpx.get(f"{service.url}/readyz", timeout=5).json()["version"]
        assert version == v2, service.log.read_text()[-3000:]
        assert "registry reachable again" in service.log.read_text()
    finally:
        if service is not None:
            service.stop()
        server.stop()
