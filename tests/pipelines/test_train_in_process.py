"""`use_ray: false`: the job's training loop in its own process, with the same checkpoints,
resume and outputs as a Ray Train run, in its own run folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from cli_runner import plexus, tiny_ctr_job

_SECTIONS = """
model: {backbone: deepfm, hidden: [32], dropout: 0.2}
embedding: {method: full, dim: 4}
train: {batch_size: 256, epochs: 3, lr: 0.03, threads_per_worker: 1}
use_ray: false
"""


def test_a_crashed_in_process_run_resumes_after_its_last_checkpoint(tmp_path: Path) -> None:
    config = tiny_ctr_job(tmp_path, "local", rows=4_000, seed=2, sections=_SECTIONS)
    done = plexus("train", str(config), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics_path = Path(done.stdout.strip().splitlines()[-1])
    first = json.loads(metrics_path.read_text())
    assert first["test_auc"] > 0.6, first  # it learned the planted signal
    checkpoints = sorted((metrics_path.parent / "checkpoints").iterdir())
    assert [c.name for c in checkpoints] == ["checkpoint_000002", "checkpoint_000003"]
    assert not (metrics_path.parent / "ray").exists()  # no Ray Train storage

    metrics_path.unlink()  # as if it died in epoch 3, after epoch 2's checkpoint
    shutil.rmtree(checkpoints[-1])
    again = plexus("train", str(config), cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed after epoch 2" in again.stdout and "epoch 2/3" not in again.stdout
    resumed = json.loads(metrics_path.read_text())
    keys = ("train_loss", "valid_auc", "valid_logloss")
    assert [[h[k] for k in keys] for h in resumed["history"]] == [
        [h[k] for k in keys] for h in first["history"]
    ]  # the same epochs, bit for bit: data order, optimiser and dropout state all restored
    assert resumed["test_auc"] == first["test_auc"]


def test_an_in_process_run_has_its_own_folder_and_one_worker(tmp_path: Path) -> None:
    from plexus.pipelines.config import load_job_config
    from plexus.pipelines.ingest import ingest
    from plexus.pipelines.train.job import run_output_dir

    config = tiny_ctr_job(tmp_path, "local", rows=1_000, seed=2, sections=_SECTIONS)
    local = load_job_config(config)
    data = ingest(local.data, output=tmp_path / "data", progress=False)
    on_ray = load_job_config(config, ["use_ray=true"])
    assert run_output_dir(local, data) != run_output_dir(on_ray, data)  # other batches
    two_workers = plexus("train", str(config), "train.workers=2", cwd=tmp_path)
    assert two_workers.returncode == 2
    assert "use_ray: false" in two_workers.stderr and "train.workers=1" in two_workers.stderr
