"""What a job trains and evaluates on is what the user named: edited inputs retrain, foreign
shards are refused, a new `data.path` is split rather than paired with the bundled sample's
validation and test files, and a torn checkpoint does not block a resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from cli_runner import plexus, tiny_ctr_job
from plexus.pipelines.config import load_job_config
from plexus.pipelines.data.synth import synth_criteo
from plexus.pipelines.runtime import retry
from plexus.pipelines.train.job import _latest_checkpoint
from plexus.pipelines.train.loop import STATE_FILE
from plexus.platform.errors import PlexusError
from plexus.platform.feature_spec import FeatureSpec


def _metrics_path(done) -> Path:
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return Path(done.stdout.strip().splitlines()[-1])


def test_edited_input_retrains_and_old_model_is_refused_on_new_shards(tmp_path: Path) -> None:
    config = tiny_ctr_job(
        tmp_path,
        "inputs",
        rows=3_000,
        seed=5,
        sections="""
model: {backbone: lr}
embedding: {method: full, dim: 4}
train: {batch_size: 512, epochs: 1, threads_per_worker: 1}
use_ray: false
""",
    )
    raw = tmp_path / "day.tsv"
    first = _metrics_path(plexus("train", str(config), cwd=tmp_path))

    synth_criteo(raw, rows=3_000, seed=6)  # same path and config, other rows
    again = plexus("train", str(config), cwd=tmp_path)
    second = _metrics_path(again)
    assert "reusing finished training run" not in again.stdout
    assert second != first and first.is_file()  # the old run is kept, not overwritten

    data = next((tmp_path / "runs" / "data").iterdir())  # now holds the edited day's shards
    refused = plexus(
        "evaluate", "--model", str(first.parent / "model"), "--data", str(data), cwd=tmp_path
    )
    assert refused.returncode != 0
    old, new = (FeatureSpec.load(f).fingerprint for f in (first.parent / "model", data))
    assert old != new and old in refused.stderr and new in refused.stderr, refused.stderr
    accepted = plexus(
        "evaluate", "--model", str(second.parent / "model"), "--data", str(data), cwd=tmp_path
    )
    assert accepted.returncode == 0, accepted.stderr[-2000:]


def test_a_new_data_path_is_split_not_paired_with_the_bundled_files() -> None:
    bundled = load_job_config(Path(_bundled("criteo")))
    assert bundled.data.valid_path and bundled.data.test_path  # the sample ships its splits

    mine = load_job_config(Path(_bundled("criteo")), ["data.path=/my/day.tsv"])
    assert mine.data.path == "/my/day.tsv"
    assert mine.data.valid_path is None and mine.data.test_path is None

    named = load_job_config(
        Path(_bundled("criteo")),
        ["data.path=/my/day.tsv", "data.valid_path=/my/dev.tsv", "data.test_path=/my/test.tsv"],
    )
    assert (named.data.valid_path, named.data.test_path) == ("/my/dev.tsv", "/my/test.tsv")


def _bundled(name: str) -> Path:
    from plexus.pipelines.config import bundled_config

    return bundled_config(name)


@pytest.mark.reliability("fault", "torn checkpoint: resume falls back to the previous good one")
def test_a_torn_checkpoint_falls_back_to_the_previous_good_one(tmp_path: Path, capsys) -> None:
    storage = tmp_path / "ray"
    for epoch in (1, 2):
        folder = storage / "run" / f"checkpoint_{epoch:06d}"
        folder.mkdir(parents=True)
        torch.save({"loop": {"epoch": epoch}}, folder / STATE_FILE)
    assert _latest_checkpoint(storage).endswith("checkpoint_000002")

    newest = storage / "run" / "checkpoint_000002" / STATE_FILE
    newest.write_bytes(newest.read_bytes()[:40])  # killed mid-write
    assert _latest_checkpoint(storage).endswith("checkpoint_000001")
    assert "skipping unreadable checkpoint" in capsys.readouterr().out

    newest.write_bytes(b"")
    assert _latest_checkpoint(storage).endswith("checkpoint_000001")
    (storage / "run" / "checkpoint_000001" / STATE_FILE).write_bytes(b"")
    assert _latest_checkpoint(storage) is None  # nothing readable: train from the start


def test_retry_recovers_from_transient_failures_and_explains_a_lasting_one() -> None:
    calls: list[int] = []
    cleanups: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise TimeoutError("The current node timed out during startup")
        return "up"

    ok = retry(flaky, what="start", advice="wait", first_wait=0, cleanup=lambda: cleanups.append(1))
    assert ok == "up" and len(calls) == 3 and len(cleanups) == 2

    def broken() -> None:
        raise TimeoutError("The current node timed out during startup")

    with pytest.raises(PlexusError, match=r"could not start a local Ray after 4 tries.*overloaded"):
        retry(broken, what="start a local Ray", advice="the machine is overloaded", first_wait=0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rows", "0", "--out", "x.tsv"], "--rows 0: give a positive number"),
        (["--rows", "10", "--out", "/"], "--out /: is a folder"),
        (["--rows", "10", "--malformed", "11", "--out", "x.tsv"], "--malformed 11"),
    ],
)
def test_synth_rejects_bad_arguments_without_a_traceback(
    tmp_path: Path, args: list[str], message: str
) -> None:
    done = plexus("data", "synth", "--format", "criteo", *args, cwd=tmp_path)
    assert done.returncode == 2 and message in done.stderr
    assert "Traceback" not in done.stderr
