"""Against a real MLflow tracking server on PostgreSQL (`plexus.pipelines.registry_server`:
initdb'd from the Debian package, `make postgres` installs it): a retrieval job logs there and
its export registers a version, `plexus promote` moves the alias, and the service loads from the
server and hot-swaps. Slow: `make test-server`."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_runner import plexus
from plexus.pipelines.registry_server import registry_server
from registry_setup import MODEL, WEAK, ServiceProcess, champion, tiny_retrieval_yaml, version_tags

pytestmark = pytest.mark.slow


def test_jobs_registry_promotion_and_service_on_postgres(tmp_path: Path) -> None:
    import mlflow
    import psycopg2

    with registry_server(tmp_path / "registry") as server:
        assert server.backend_store_uri.startswith("postgresql+psycopg2://")
        config = tiny_retrieval_yaml(tmp_path, server.uri)
        first = plexus("run", str(config), *WEAK, cwd=tmp_path)
        assert first.returncode == 0, first.stderr[-3000:]
        assert "registered tiny-retrieval version 1" in first.stdout
        assert "promotion gate: no-champion" in first.stdout
        service = ServiceProcess(server.uri, tmp_path / "service")
        try:
            service.wait_for("1")
            second = plexus(
                "run", str(config), "promote.gate=false", "export.alias=null", cwd=tmp_path
            )
            assert second.returncode == 0, second.stderr[-3000:]
            assert "registered tiny-retrieval version 2" in second.stdout
            assert champion(server.uri) == "1" and service.version() == "1"

            gated = plexus("promote", str(config), cwd=tmp_path)
            assert gated.returncode == 0, gated.stderr[-3000:]
            assert gated.stdout.strip().splitlines()[-1] == "promoted", gated.stdout
            assert version_tags(server.uri, "2")["plexus.promote.decision"] == "promoted"
            service.wait_for("2")  # hot-swapped from the server's artifacts
            assert service.retrieve(user_id=3)["version"] == "2"
        finally:
            service.stop()

        # Everything above went through the server into PostgreSQL.
        client = mlflow.MlflowClient(tracking_uri=server.uri)
        experiment = client.get_experiment_by_name("tiny-promote")
        runs = client.search_runs([experiment.experiment_id])
        assert {"tiny-retrieval", "tiny-ingest"} <= {r.info.run_name for r in runs}
        dsn = server.backend_store_uri.replace("postgresql+psycopg2://", "postgresql://")
        with psycopg2.connect(dsn) as db, db.cursor() as cursor:
            cursor.execute(
                "SELECT version, alias FROM registered_model_aliases WHERE name = %s", (MODEL,)
            )
            assert cursor.fetchall() == [(2, "champion")]
            cursor.execute("SELECT count(*) FROM model_versions WHERE name = %s", (MODEL,))
            assert cursor.fetchone() == (2,)
    assert server.proc is None  # stopped, with its process group
