"""A real 2-worker training job with its tables sharded by TorchRec on one machine: it trains,
checkpoints, resumes after one of its workers is killed (Ray Train `FailureConfig`), and ends
with a test AUC within noise of the 1-worker job on the same data."""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from cli_runner import PLEXUS, kill_train_workers_after, plexus, tiny_ctr_job

pytestmark = pytest.mark.slow

SECTIONS = """
model: {{backbone: deepfm, hidden: [32]}}
embedding: {{method: full, dim: 8}}
train: {{batch_size: 256, epochs: 3, workers: {workers}, threads_per_worker: 1, max_failures: 1}}
"""


def _job(folder: Path, workers: int) -> Path:
    folder.mkdir()
    sections = SECTIONS.format(workers=workers)
    return tiny_ctr_job(folder, "sharded", rows=20_000, seed=3, sections=sections)


def _metrics(folder: Path) -> dict:
    (path,) = folder.glob("runs/sharded/train-*/metrics.json")
    return json.loads(path.read_text())


def _auc_standard_error(auc: float, folder: Path) -> float:
    """Hanley and McNeil's (1982) standard error of an AUC on the job's test split."""
    (data,) = (folder / "runs" / "data").iterdir()
    labels = [
        v.as_py() for p in sorted(data.glob("test/*.parquet")) for v in pq.read_table(p)["label"]
    ]
    pos = sum(1 for v in labels if v > 0.5)
    neg = len(labels) - pos
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    variance = (auc * (1 - auc) + (pos - 1) * (q1 - auc**2) + (neg - 1) * (q2 - auc**2)) / (
        pos * neg
    )
    return math.sqrt(variance)


@pytest.mark.reliability(
    "fault", "one of 2 sharded Ray Train workers SIGKILLed: resumed, AUC within noise of 1 worker"
)
def test_two_sharded_workers_survive_a_killed_worker_and_match_one_worker(tmp_path: Path) -> None:
    one = tmp_path / "one"
    single = plexus("train", str(_job(one, 1)), cwd=tmp_path)
    assert single.returncode == 0, single.stderr[-3000:]

    two = tmp_path / "two"
    config = _job(two, 2)
    log = two / "job.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [*PLEXUS, "train", str(config)],
            cwd=two,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        kill_train_workers_after(proc, log, "epoch 1/3", only_one=True)
        proc.wait(timeout=900)
    output = log.read_text(errors="replace")
    assert proc.returncode == 0, output[-4000:]
    assert "tables sharded over 2 workers" in output, output[-4000:]
    assert (
        "embeddings.ebc: 39 tables:" in output and "first_order.ebc: 39 tables replicated" in output
    )
    assert "resumed after epoch 1" in output, output[-4000:]

    sharded, reference = _metrics(two), _metrics(one)
    # each worker holds only its shards (the planner spreads the 39 field tables over both)
    assert (
        sharded["history"][-1]["worker_table_bytes"]
        < reference["history"][-1]["worker_table_bytes"]
    )
    noise = 3 * _auc_standard_error(reference["test_auc"], one)
    assert abs(sharded["test_auc"] - reference["test_auc"]) <= noise, (sharded, reference, noise)
    assert sharded["test_auc"] > 0.65  # planted signal learned, not a coin flip
