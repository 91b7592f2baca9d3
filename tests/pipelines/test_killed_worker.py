"""A Ray Train worker killed mid-epoch: Ray Train restarts it (`FailureConfig`), it resumes from
the last epoch checkpoint, and the job ends with the same metrics as an uninterrupted run (both
trainings resume bit for bit, so the figures must be equal, not merely close)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from cli_runner import PLEXUS, kill_train_workers_after, plexus, tiny_ctr_job

pytestmark = pytest.mark.slow


def _ctr_job(folder: Path) -> Path:
    return tiny_ctr_job(
        folder,
        "worker",
        rows=8_000,
        seed=3,
        sections="""
model: {backbone: deepfm, hidden: [32]}
embedding: {method: full, dim: 4}
train: {batch_size: 128, epochs: 3, threads_per_worker: 1, max_failures: 1}
""",
    )


def _retrieval_job(folder: Path) -> Path:
    from plexus.pipelines.data.synth import synth_interactions

    log = synth_interactions(folder / "log", interactions=30_000, seed=1)
    config = folder / "retrieval.yaml"
    config.write_text(
        f"name: worker\n"
        f"data: {{format: lightgcn, path: {log}, interactions: {{split: given, validation_users: 0}}}}\n"
        "model: {dim: 16, history_len: 10}\n"
        "train: {epochs: 3, batch_size: 128, num_negatives: 64, threads: 1, max_failures: 1}\n"
        "knn_embed: {num_clusters: 8, neighbors: 5}\n"
        "eval: {ks: [20]}\n"
        "export: {registered_model: worker-retrieval}\n"
        f'tracking: {{uri: "sqlite:///{folder / "mlflow.db"}", experiment: worker}}\n'
        f"output: {folder / 'runs'}\n"
    )
    return config


def _ctr_metrics(folder: Path) -> dict:
    (path,) = folder.glob("runs/worker/train-*/metrics.json")
    return {k: v for k, v in json.loads(path.read_text()).items() if k.startswith("test_")}


def _retrieval_metrics(folder: Path) -> dict:
    (summary,) = folder.glob("runs/worker-retrieval-*/summary.json")
    return json.loads(summary.read_text())["tower"]


@pytest.mark.reliability(
    "fault", "Ray Train worker SIGKILLed mid-epoch: restarted, resumed, equal test metrics"
)
@pytest.mark.parametrize("kind", ["ctr", "retrieval"])
def test_a_killed_worker_is_restarted_and_the_job_ends_as_if_uninterrupted(
    tmp_path: Path, kind: str
) -> None:
    make, verb = (_ctr_job, "train") if kind == "ctr" else (_retrieval_job, "run")
    calm, killed = tmp_path / "calm", tmp_path / "killed"
    calm.mkdir(), killed.mkdir()
    uninterrupted = plexus(verb, str(make(calm)), cwd=calm)
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]

    log = killed / "job.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [*PLEXUS, verb, str(make(killed))],
            cwd=killed,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        marker = "epoch 1/3" if kind == "ctr" else "[retrieval] {'epoch': 1.0,"
        kill_train_workers_after(proc, log, marker)
        proc.wait(timeout=600)
    output = log.read_text(errors="replace")
    assert proc.returncode == 0, output[-4000:]
    assert "resumed after epoch 1" in output, output[-4000:]
    assert output.count(marker) == 1, "the restarted worker redid the first epoch"

    if kind == "ctr":
        before, after = _ctr_metrics(calm), _ctr_metrics(killed)
    else:
        before, after = _retrieval_metrics(calm), _retrieval_metrics(killed)
    assert before and after == before
