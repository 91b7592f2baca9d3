"""The promotion gate on a real SQLite MLflow store with real bundles: the job registers and the
gate promotes (no champion yet), a better candidate moves the alias and the running service
swaps to it, a worse one (gated through `plexus promote`) leaves it; tags record both."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_runner import plexus
from plexus.pipelines.promote import PromoteConfig, evaluate_bundle
from plexus.pipelines.retrieval import export_retrieval, load_retrieval_config, run_retrieval_job
from plexus.platform.errors import ConfigError
from registry_setup import MODEL, WEAK, ServiceProcess, champion, tiny_retrieval_yaml, version_tags

TAG = "plexus.promote"


def test_gate_moves_the_alias_only_for_a_better_candidate(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = tiny_retrieval_yaml(tmp_path, uri)

    first = run_retrieval_job(load_retrieval_config(config, WEAK))
    assert first["version"] == "1" and first["promotion"]["decision"] == "no-champion"
    assert champion(uri) == "1"
    service = ServiceProcess(uri, tmp_path / "service")
    try:
        service.wait_for("1")

        second = run_retrieval_job(load_retrieval_config(config))
        assert second["version"] == "2"
        promotion = second["promotion"]
        assert promotion["decision"] == "promoted", promotion
        tags = version_tags(uri, "2")
        assert tags[f"{TAG}.decision"] == "promoted"
        assert tags[f"{TAG}.champion_version"] == "1"
        got, best = (float(tags[f"{TAG}.{side}.ndcg_at_5"]) for side in ("candidate", "champion"))
        assert got >= best and {f"{TAG}.candidate.recall_at_5", f"{TAG}.metric"} <= set(tags)
        assert champion(uri) == "2"
        service.wait_for("2")  # the running service followed the alias
        assert service.retrieve(user_id=3)["version"] == "2"
        _check_against_the_job_evaluation(uri, config, second)

        # A worse candidate: the weak model re-exported without moving the alias, then gated.
        export_retrieval(load_retrieval_config(config, [*WEAK, "promote.gate=false", "export.alias=null"]))  # fmt: skip
        done = plexus("promote", str(config), cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.strip().splitlines()[-1] == "rejected", done.stdout
        assert "candidate v3" in done.stdout and "champion v2" in done.stdout
        tags = version_tags(uri, "3")
        assert tags[f"{TAG}.decision"] == "rejected" and tags[f"{TAG}.champion_version"] == "2"
        got, best = (float(tags[f"{TAG}.{side}.ndcg_at_5"]) for side in ("candidate", "champion"))
        assert got < best
        assert champion(uri) == "2"
        assert service.version() == "2"
        again = plexus("promote", str(config), "--candidate", "2", cwd=tmp_path)
        assert again.stdout.strip().splitlines()[-1] == "already-champion", again.stderr[-3000:]
        assert champion(uri) == "2"
    finally:
        service.stop()


def test_gate_config_names_the_key() -> None:
    assert PromoteConfig(metric="recall", k=20).key == "recall@20"
    with pytest.raises(ConfigError, match=r"promote\.k"):
        PromoteConfig(k=0)
    with pytest.raises(ConfigError, match=r"promote\.margin"):
        PromoteConfig(margin=2.0)


def test_gate_needs_an_alias(tmp_path: Path) -> None:
    config = tiny_retrieval_yaml(tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}")
    with pytest.raises(ConfigError, match=r"export\.alias"):
        load_retrieval_config(config, ["export.alias=null"])


def test_promote_without_a_registered_version_says_what_to_run(tmp_path: Path) -> None:
    config = tiny_retrieval_yaml(tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}")
    done = plexus("promote", str(config), cwd=tmp_path)
    assert done.returncode == 2
    assert f"{MODEL!r} has no registered version" in done.stderr and "plexus run" in done.stderr


def _check_against_the_job_evaluation(uri: str, config: Path, summary: dict) -> None:
    """The gate's single-vector Recall/NDCG@5 of the served bundle equals the job's own exact
    evaluation of the torch model (the index is exact below 200k items): same lists, same ids."""
    import mlflow
    from plexus.pipelines.retrieval.job import load_data
    from plexus.serving.bundle import Bundle

    mlflow.set_tracking_uri(uri)
    bundle = Bundle.load(mlflow.artifacts.download_artifacts(f"models:/{MODEL}/2"))
    data = load_data(load_retrieval_config(config))
    served = evaluate_bundle(bundle, data, k=5, diversify=False)
    row = next(r for r in summary["results"] if r["method"] == "single" and r["k"] == 5)
    assert served["recall@5"] == pytest.approx(row["recall"], abs=0.01), (served, row)
    assert served["ndcg@5"] == pytest.approx(row["ndcg"], abs=0.01), (served, row)
