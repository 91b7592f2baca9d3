"""A full or read-only output disk: a clear error, and the previous outputs kept whole.

Real small file systems (a tmpfs mounted for the test; skipped where mounting is not allowed).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_runner import plexus
from plexus.pipelines.data.synth import synth_criteo


@pytest.fixture
def small_disk(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A real tmpfs of 400 KB (or the size a test's `disk_size` marker gives)."""
    marker = request.node.get_closest_marker("disk_size")
    size = marker.args[0] if marker else "400k"
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode()[:200]}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=False)


TROUBLES = pytest.mark.parametrize(
    ("trouble", "message"),
    [("full", "the disk is full"), ("read-only", "the file system is read-only")],
)


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(folder.rglob("*"))
        if f.is_file()
    }


@pytest.mark.reliability(
    "fault", "ingest onto a full or read-only disk: one-line error, old shards kept"
)
@TROUBLES
@pytest.mark.disk_size("1m")  # the first ingest's shards and its spill (~220 bytes a row) fit
def test_ingest_on_a_full_or_read_only_disk_fails_clearly_and_keeps_the_old_shards(
    tmp_path: Path, small_disk: Path, trouble: str, message: str
) -> None:
    raw = synth_criteo(tmp_path / "day.tsv", rows=2_000, seed=1)
    config = tmp_path / "job.yaml"
    config.write_text(
        f"name: disk\ndata: {{format: criteo, path: {raw}, output: {small_disk / 'data'}}}\n"
    )
    first = plexus("ingest", str(config), cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    before = _digest(small_disk / "data")

    synth_criteo(raw, rows=20_000, seed=2)  # new input: ingest must rewrite the shards
    if trouble == "read-only":
        subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    failed = plexus("ingest", str(config), cwd=tmp_path)
    assert failed.returncode == 2, failed.stderr[-2000:]
    assert message in failed.stderr and "Traceback" not in failed.stderr
    assert str(small_disk) in failed.stderr  # the error names where it could not write
    assert _digest(small_disk / "data") == before  # the previous good output, untouched
    assert [p.name for p in small_disk.iterdir()] == ["data"]  # no temporary folder left


@pytest.mark.reliability(
    "fault", "training checkpoints onto a full or read-only disk: one-line error, old run kept"
)
@TROUBLES
@pytest.mark.slow
@pytest.mark.disk_size("16m")
def test_training_on_a_full_or_read_only_disk_fails_clearly_and_keeps_the_old_run(
    tmp_path: Path, small_disk: Path, trouble: str, message: str
) -> None:
    raw = synth_criteo(tmp_path / "day.tsv", rows=3_000, seed=1)
    config = tmp_path / "job.yaml"
    sections = (
        f"name: disk\ndata: {{format: criteo, path: {raw}, output: {tmp_path / 'data'}}}\n"
        "model: {backbone: lr}\nembedding: {method: full, dim: 2}\n"
        f'tracking: {{uri: "sqlite:///{tmp_path / "mlflow.db"}", experiment: disk}}\n'
        f"output: {small_disk / 'runs'}\n"
    )
    config.write_text(sections + "train: {batch_size: 512, epochs: 1, threads_per_worker: 1}\n")
    first = plexus("train", str(config), cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    before = _digest(small_disk / "runs")

    config.write_text(sections + "train: {batch_size: 256, epochs: 1, threads_per_worker: 1}\n")
    if trouble == "read-only":
        subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    else:  # leave a few KB: the new run's folder starts, its first checkpoint cannot be written
        filler = small_disk / "filler"
        with filler.open("wb", buffering=0) as out, contextlib.suppress(OSError):
            while True:
                out.write(b"\0" * 4096)
        os.truncate(filler, filler.stat().st_size - 16384)
    failed = plexus("train", str(config), cwd=tmp_path)
    assert failed.returncode == 2, failed.stdout[-2000:] + failed.stderr[-3000:]
    last = failed.stderr.strip().splitlines()[-1]  # the job's own last word: one line
    assert last.startswith("plexus: error: cannot write") and message in last, last
    assert str(small_disk) in last
    # Ray logs the failed worker's traceback (tagged with the worker); the driver adds none.
    ours = [line for line in failed.stderr.splitlines() if not line.startswith("\x1b[36m(")]
    assert not any("Traceback" in line for line in ours), failed.stderr[-3000:]
    after = _digest(small_disk / "runs")
    assert {k: v for k, v in after.items() if k in before} == before  # the old run, untouched


@pytest.mark.reliability(
    "fault", "MLflow store on a full or read-only disk: one-line error naming the store"
)
@TROUBLES
@pytest.mark.slow
@pytest.mark.disk_size("16m")
def test_a_job_whose_mlflow_store_cannot_be_written_fails_clearly(
    tmp_path: Path, small_disk: Path, trouble: str, message: str
) -> None:
    """SQLite reports a full or read-only disk as its own OperationalError, not an OSError:
    the job still ends with one line naming the store, and the store keeps the earlier run."""
    raw = synth_criteo(tmp_path / "day.tsv", rows=3_000, seed=1)
    store = small_disk / "mlflow.db"
    config = tmp_path / "job.yaml"
    sections = (
        f"name: store\ndata: {{format: criteo, path: {raw}, output: {tmp_path / 'data'}}}\n"
        "model: {backbone: lr}\nembedding: {method: full, dim: 2}\n"
        f'tracking: {{uri: "sqlite:///{store}", experiment: store}}\n'
        f"output: {tmp_path / 'runs'}\n"
    )
    config.write_text(sections + "train: {batch_size: 512, epochs: 1, threads_per_worker: 1}\n")
    first = plexus("train", str(config), cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]

    config.write_text(sections + "train: {batch_size: 256, epochs: 1, threads_per_worker: 1}\n")
    if trouble == "read-only":
        subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    else:
        filler = small_disk / "filler"
        with filler.open("wb", buffering=0) as out, contextlib.suppress(OSError):
            while True:
                out.write(b"\0" * 4096)
    failed = plexus("train", str(config), cwd=tmp_path)
    assert failed.returncode == 2, failed.stdout[-2000:] + failed.stderr[-3000:]
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith("plexus: error: cannot write") and message in last, last
    assert str(store) in last and "tracking.uri" in last
    assert "Traceback" not in failed.stderr, failed.stderr[-3000:]


def _retrieval_job(folder: Path) -> Path:
    """A tiny retrieval job tracked in `folder/mlflow.db`, its artifacts in `folder/mlartifacts`."""
    from plexus.pipelines.data.synth import synth_interactions

    log = synth_interactions(folder / "log", interactions=4_000, seed=1)
    config = folder / "retrieval.yaml"
    config.write_text(
        f"name: export\n"
        f"data: {{format: lightgcn, path: {log}, interactions: {{split: given, validation_users: 0}}}}\n"
        "model: {dim: 8, history_len: 8}\n"
        "train: {epochs: 1, batch_size: 256, num_negatives: 32, threads: 1}\n"
        "knn_embed: {num_clusters: 4, neighbors: 3}\n"
        "eval: {ks: [10]}\n"
        "export: {registered_model: disk-retrieval, alias: champion}\n"
        f'tracking: {{uri: "sqlite:///{folder / "mlflow.db"}", experiment: export}}\n'
        f"output: {folder / 'runs'}\n"
        "use_ray: false\n"
    )
    return config


def _champion(folder: Path) -> tuple[str, Path]:
    """The version `@champion` names and where its bundle's artifacts lie."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    version = client.get_model_version_by_alias("disk-retrieval", "champion")
    run = client.get_run(version.run_id)
    return version.version, Path(run.info.artifact_uri.removeprefix("file://"))


@pytest.mark.reliability(
    "fault", "export onto a full or read-only disk: one-line error, the champion version kept"
)
@TROUBLES
@pytest.mark.slow
@pytest.mark.disk_size("16m")
def test_export_onto_a_full_or_read_only_disk_fails_clearly_and_keeps_the_champion(
    tmp_path: Path, small_disk: Path, trouble: str, message: str
) -> None:
    """`plexus export` logs the bundle into the MLflow artifact store and registers a version
    last: when the store's disk cannot take the bundle, the job ends with one line naming the
    file, no version is registered, and the served `@champion` stays whole. (A full TMPDIR is
    no fault: Python's tempfile falls back to the next writable temporary folder.)"""
    config = _retrieval_job(tmp_path)
    (small_disk / "mlartifacts").mkdir()  # the store's artifacts on their own (small) volume
    (tmp_path / "mlartifacts").symlink_to(small_disk / "mlartifacts")
    first = plexus("run", str(config), cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    version, artifacts = _champion(tmp_path)
    before = _digest(artifacts)
    assert any(name.startswith("bundle/") for name in before), sorted(before)

    if trouble == "read-only":
        subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    else:
        filler = small_disk / "filler"
        with filler.open("wb", buffering=0) as out, contextlib.suppress(OSError):
            while True:
                out.write(b"\0" * 4096)
    failed = plexus("export", str(config), cwd=tmp_path)
    assert failed.returncode == 2, failed.stdout[-2000:] + failed.stderr[-3000:]
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith("plexus: error: cannot write") and message in last, last
    # named as the store sees it (through the link)
    assert f"{tmp_path / 'mlartifacts'}/" in last and "MLflow artifact store" in last, last
    assert "Traceback" not in failed.stderr, failed.stderr[-3000:]
    assert _champion(tmp_path)[0] == version  # no new version took the alias
    assert _digest(artifacts) == before  # the served bundle, untouched
