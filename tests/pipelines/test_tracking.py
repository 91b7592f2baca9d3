"""MLflow runs tied to output folders, on a real SQLite store."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from plexus.pipelines import tracking


def test_a_resumed_child_moves_under_the_new_parent(tmp_path: Path) -> None:
    tracking.configure(f"sqlite:///{tmp_path / 'mlflow.db'}")
    folder = tmp_path / "train"
    folder.mkdir()

    class Killed(Exception):
        pass

    first_parent = mlflow.start_run(experiment_id=tracking.experiment_id("t"), run_name="run")
    with (
        pytest.raises(Killed),
        tracking.resumable_run(folder, "t", "train", nested=True) as (
            child,
            resumed,
        ),
    ):
        assert not resumed
        raise Killed  # the job dies mid-training; its parent is never ended
    child_id = child.info.run_id

    mlflow.end_run()  # what is left of the killed process: its parent still RUNNING in the store
    client = mlflow.MlflowClient()
    client.update_run(first_parent.info.run_id, status="RUNNING")
    with (
        tracking.run("t", "run") as second_parent,
        tracking.resumable_run(folder, "t", "train", nested=True) as (again, resumed),
    ):
        assert resumed and again.info.run_id == child_id
    tags = client.get_run(child_id).data.tags
    assert tags["mlflow.parentRunId"] == second_parent.info.run_id
    assert client.get_run(first_parent.info.run_id).info.status == "KILLED"
    children = client.search_runs(
        [second_parent.info.experiment_id],
        f"tags.mlflow.parentRunId = '{second_parent.info.run_id}'",
    )
    assert [r.info.run_id for r in children] == [child_id]
