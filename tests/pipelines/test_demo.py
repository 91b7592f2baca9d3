"""`plexus demo` (what `make demo` runs), end to end at a small size: a real local Ray, MLflow
store, ONNX export, service process and HTTP request."""

from __future__ import annotations

import re
import socket
from pathlib import Path

from cli_runner import plexus


def test_demo_serves_a_retrieval_from_the_registered_champion(tmp_path: Path) -> None:
    done = plexus("demo", "--interactions", "6000", "train.epochs=2", cwd=tmp_path, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    served = [line for line in lines if line.startswith("[plexus] served:")]
    assert len(served) == 1, done.stdout[-3000:]
    request, candidates = re.search(
        r"POST /v1/retrieve (\{.*?\}) -> \[([\d, ]*)\]", served[0]
    ).groups()
    assert '"k": 10' in request
    ids = [int(x) for x in candidates.split(",")]
    log = tmp_path / "runs" / "demo" / "log"
    user, *seen = (int(x) for x in (log / "train.txt").read_text().splitlines()[0].split())
    catalog = {
        int(x) for line in (log / "train.txt").read_text().splitlines() for x in line.split()[1:]
    }
    assert len(set(ids)) == len(ids) == 10 and set(ids) <= catalog
    assert not set(ids) & set(seen), "the user's training items must not be served back"

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    champion = client.get_model_version_by_alias("plexus-demo", "champion")
    assert f"version {champion.version} at http://127.0.0.1:" in done.stdout
    # The service is stopped: nothing listens on its port any more.
    port = int(re.search(r"at http://127\.0\.0\.1:(\d+)", done.stdout).group(1))
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0
    for where in ("mlflow ui --backend-store-uri", "bundle (ONNX", "service's log"):
        assert where in done.stdout
