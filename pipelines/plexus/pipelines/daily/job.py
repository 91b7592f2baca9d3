"""Day after day: `plexus daily CONFIG --day FILE [--day FILE ...]`, warm-started CTR training.

Each day's file goes through the usual ingest (with `min_count` 1: admission is decided here),
then:

1. the day's training counts update each vocabulary feature's `IdState` (admission after
   `daily.admit_after` occurrences, eviction after `daily.evict_after_days` unseen days);
2. the day's shards are rewritten in the state's stable row space (`remap_day`), with a feature
   spec whose vocabularies are the state's rows: a new spec version per day, its `source.daily`
   recording what changed (admitted, evicted, pending, rows);
3. the model trains on them through the usual job (`train.job.train`), starting from the previous
   day's weights (`warm_start_state`: rows keep their values, grown tables keep their rows,
   re-assigned rows are re-initialised); `cold=True` starts from scratch every day instead.

Everything is written under `<state>/day-<i>/` (the state's `ids.json`, the remapped data, the
warm-start weights, `day.json` with the metrics) and `<state>/latest.json` points at the last
finished day: a rerun skips finished days, and a day whose input changed is refused.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from plexus.pipelines.daily.ids import IdState, load_states, save_states
from plexus.pipelines.files import write_json
from plexus.pipelines.ingest import IngestResult
from plexus.pipelines.ingest.encode import arrow_schema
from plexus.platform.errors import DataError, PlexusError
from plexus.platform.feature_spec import Encoding, Feature

if TYPE_CHECKING:
    from plexus.pipelines.config import JobConfig

__all__ = ["run_days", "run_day", "remap_day", "warm_start_state", "day_counts"]

SPLITS = ("train", "valid", "test")


def _stateful(feature: Feature) -> bool:
    return feature.encoding is Encoding.VOCAB


def day_counts(data: IngestResult, feature: Feature) -> np.ndarray:
    """Occurrences of each of the day's ids of `feature` in its training split, (cardinality,)."""
    frame = pl.scan_parquet([str(p) for p in data.shards("train")]).select(feature.name)
    if feature.is_multi_valued:
        frame = frame.explode(feature.name)
    ids = frame.collect()[feature.name].drop_nulls().to_numpy()
    return np.bincount(ids, minlength=feature.cardinality)


def _remap_column(column: pa.ChunkedArray, lut: np.ndarray) -> pa.Array:
    column = column.combine_chunks()
    if pa.types.is_list(column.type):
        flat = lut[column.values.to_numpy(zero_copy_only=False)]
        return pa.ListArray.from_arrays(column.offsets, pa.array(flat, pa.int64()))
    return pa.array(lut[column.to_numpy(zero_copy_only=False)], pa.int64())


def remap_day(
    day: IngestResult,
    states: dict[str, IdState],
    bucket_rows: dict[str, int],
    out: Path,
    *,
    change: dict[str, Any],
) -> IngestResult:
    """The day's shards with each vocabulary feature's ids replaced by the state's rows (ids
    without a row -> 0) and bucketized features clipped to `bucket_rows` (the first day's
    cardinality: bucket ids are stable, only the top clip moves); written to `out` whole."""
    features = []
    luts: dict[str, np.ndarray] = {}
    for f in day.spec.features:
        if _stateful(f):
            state = states[f.name]
            luts[f.name] = state.lookup(("", *f.vocabulary))
            f = dataclasses.replace(f, cardinality=state.rows, vocabulary=tuple(state.values[1:]))
        elif f.encoding is Encoding.BUCKETIZE:
            rows = bucket_rows[f.name]
            luts[f.name] = np.minimum(np.arange(f.cardinality), rows - 1)
            f = dataclasses.replace(f, cardinality=rows)
        features.append(f)
    spec = dataclasses.replace(
        day.spec,
        features=tuple(features),
        source={**day.spec.source, "daily": change},
    )
    schema = arrow_schema(spec)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    shards: dict[str, list[str]] = {}
    for split in SPLITS:
        (tmp / split).mkdir(parents=True)
        shards[split] = []
        for shard in day.shards(split):
            table = pq.read_table(shard)
            columns = [
                _remap_column(table[name], luts[name]) if name in luts else table[name]
                for name in schema.names
            ]
            pq.write_table(pa.Table.from_arrays(columns, schema=schema), tmp / split / shard.name)
            shards[split].append(shard.name)
    spec.save(tmp)
    write_json(tmp / "manifest.json", {"derived_from": str(day.output), "shards": shards})
    if out.exists():
        shutil.rmtree(out)
    tmp.replace(out)
    return IngestResult(
        output=out,
        spec=spec,
        rows=day.rows,
        rejects=day.rejects,
        skipped=False,
        quality=day.quality,
    )


def warm_start_state(
    previous: dict[str, torch.Tensor],
    fresh: dict[str, torch.Tensor],
    reused_rows: dict[str, Sequence[int]],
) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """The new day's starting weights: yesterday's, shaped for today's model.

    Equal shapes are copied; a table that grew keeps its rows in place (rows are stable ids)
    and its new rows come from `fresh`; rows of `reused_rows[feature]` (given to another
    value) are taken from `fresh` in that feature's per-id tables (`.t_<feature>.`); anything
    else (a changed layer) starts fresh. Returns (state, counts of copied/grown/fresh tensors).
    """
    state: dict[str, torch.Tensor] = {}
    counts = {"copied": 0, "grown": 0, "fresh": 0}
    for key, new in fresh.items():
        old = previous.get(key)
        if old is not None and old.shape == new.shape:
            state[key] = old.clone()
            counts["copied"] += 1
        elif old is not None and old.dim() >= 1 and old.shape[1:] == new.shape[1:]:
            grown = new.clone()
            rows = min(old.shape[0], new.shape[0])
            grown[:rows] = old[:rows]
            state[key] = grown
            counts["grown"] += 1
        else:
            state[key] = new.clone()
            counts["fresh"] += 1
    for feature, rows in reused_rows.items():
        if not rows:
            continue
        index = torch.as_tensor(list(rows), dtype=torch.int64)
        for key in state:
            if f".t_{feature}." in key and state[key].dim() >= 1:
                state[key][index] = fresh[key][index]
    return state, counts


def _fingerprint(data: IngestResult) -> str:
    return data.spec.fingerprint


def run_day(
    job: JobConfig, day_file: str | Path, index: int, state_dir: Path, *, cold: bool = False
) -> dict[str, Any]:
    """Ingest, update the ids, remap and train day `index` (0-based); returns its record."""
    from plexus.models.backbones import build_ctr_model
    from plexus.pipelines.jobs import run_ingest
    from plexus.pipelines.train.job import train

    state_dir = Path(state_dir).resolve()  # Ray workers run elsewhere
    folder = state_dir / f"day-{index}"
    record_file = folder / "day.json"
    day_job = dataclasses.replace(
        job,
        data=dataclasses.replace(
            job.data, path=str(day_file), valid_path=None, test_path=None, min_count=1
        ),
    )
    day = run_ingest(day_job, progress=False)
    if record_file.is_file():
        record = json.loads(record_file.read_text())
        if record["input_fingerprint"] != _fingerprint(day):
            raise DataError(
                f"{day_file}: day {index} was trained from other data (feature spec "
                f"{record['input_fingerprint']}, now {_fingerprint(day)}); use a new state "
                f"folder (--state) to start another sequence of days"
            )
        print(f"[plexus] day {index}: done before ({record_file}), reusing it")
        return record

    # 1. Yesterday's ids (or none), updated with today's counts.
    if index == 0:
        states: dict[str, IdState] = {}
        meta: dict[str, Any] = {"buckets": {}}
    else:
        previous_ids = state_dir / f"day-{index - 1}" / "ids.json"
        if not previous_ids.is_file():
            raise PlexusError(f"day {index - 1} has not run ({previous_ids} missing); run it first")
        states, meta = load_states(previous_ids)
    change: dict[str, Any] = {}
    reused: dict[str, tuple[int, ...]] = {}
    for f in day.spec.features:
        if _stateful(f):
            state = states.setdefault(f.name, IdState.empty())
            counts = day_counts(day, f)
            step = state.update(index, ("", *f.vocabulary), counts, job.daily)
            reused[f.name] = step.reused_rows
            change[f.name] = {
                k: v for k, v in dataclasses.asdict(step).items() if k != "reused_rows"
            } | {"reused": len(step.reused_rows)}
        elif f.encoding is Encoding.BUCKETIZE:
            meta["buckets"].setdefault(f.name, f.cardinality)
    change = {"day": index, "features": change}

    # 2. The day's data in stable rows.
    data = remap_day(day, states, meta["buckets"], folder / "data", change=change)

    # 3. Warm start from yesterday's model.
    init: Path | None = None
    if index > 0 and not cold:
        yesterday = json.loads((state_dir / f"day-{index - 1}" / "day.json").read_text())
        previous = torch.load(Path(yesterday["model"]) / "model.pt", weights_only=True)
        fresh = build_ctr_model(job.model, job.embedding, data.spec).state_dict()
        warm, _ = warm_start_state(previous, fresh, reused)
        init = folder / "init.pt"
        torch.save(warm, init)
    result = train(day_job, data, init_state=init)
    record = {
        "day": index,
        "input": str(day_file),
        "input_fingerprint": _fingerprint(day),
        "warm_start": init is not None,
        "model": str(result.output / "model"),
        "metrics": {k: v for k, v in result.metrics.items() if isinstance(v, int | float)},
        "change": change,
    }
    save_states(folder / "ids.json", states, meta)
    write_json(record_file, record)
    write_json(state_dir / "latest.json", {"day": index, "record": str(record_file)})
    totals = {
        key: sum(c[key] for c in change["features"].values())
        for key in ("admitted", "evicted", "reused")
    }
    print(
        f"[plexus] day {index}: test AUC {result.metrics.get('test_auc', float('nan')):.4f} "
        f"({'warm start' if init else 'from scratch'}); ids admitted {totals['admitted']:,}, "
        f"evicted {totals['evicted']:,}, rows reused {totals['reused']:,}"
    )
    return record


def run_days(
    job: JobConfig, days: Sequence[str | Path], state_dir: Path, *, cold: bool = False
) -> list[dict[str, Any]]:
    """`run_day` for each file in order (finished days are reused)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    return [run_day(job, day, i, state_dir, cold=cold) for i, day in enumerate(days)]
