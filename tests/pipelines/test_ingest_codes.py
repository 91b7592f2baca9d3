"""The streamed ingest's run codes: blocks coded in the job's process and blocks coded by a Ray
task (then translated) count into the same vocabulary, and the lookup table gives the ids the
vocabulary's order gives."""

from __future__ import annotations

import collections

import numpy as np
import polars as pl
from plexus.pipelines.ingest import DataConfig, DataFormat
from plexus.pipelines.ingest.codes import RunCodes, SparseCounts, local_codes


def _blocks(seed: int) -> list[pl.Series]:
    rng = np.random.default_rng(seed)
    blocks = []
    for size in (500, 1, 2_000, 700):
        values = [f"v{i}" for i in rng.zipf(1.3, size) % 3_000]
        values = [None if i % 11 == 0 else v for i, v in enumerate(values)]
        blocks.append(pl.Series("c", values + [""], dtype=pl.String))
    return blocks


def test_in_process_and_translated_blocks_give_the_whole_input_vocabulary() -> None:
    config = DataConfig(format=DataFormat.CRITEO, path="unused", min_count=2)
    blocks = _blocks(0)
    codes = RunCodes(("c",))
    total = np.zeros(0, np.int64)
    coded = []
    for i, strings in enumerate(blocks):
        if i % 2:  # a Ray task's block: its own codes, translated by the driver
            local, values = local_codes(strings)
            counts = SparseCounts.of(local.drop_nulls().to_numpy())
            assert values.gather(local).to_list() == strings.to_list()
            run, by_local = codes.translate("c", local, values)
            counts = counts.translated(by_local)
        else:
            run = codes.code(strings)
            counts = SparseCounts.of(run.drop_nulls().to_numpy())
        assert run.dtype == pl.UInt32
        assert run.is_null().to_list() == strings.is_null().to_list()
        total = counts.add_to(total)
        coded.append(run)

    vocabulary, lookup = codes.vocabulary("c", total, config)
    seen = collections.Counter(v for b in blocks for v in b.to_list() if v)
    expected = sorted((v for v, n in seen.items() if n >= 2), key=lambda v: (-seen[v], v))
    assert list(vocabulary) == expected and len(expected) > 100
    ids = {v: i for i, v in enumerate(vocabulary, start=1)}
    for strings, run in zip(blocks, coded, strict=True):
        got = pl.Series(lookup).gather(run).fill_null(0).to_list()
        assert got == [ids.get(v, 0) if v else 0 for v in strings.to_list()]


def test_sparse_counts_by_bincount_and_by_sort_sum_in_any_order() -> None:
    rng = np.random.default_rng(1)
    dense = rng.integers(0, 50, 1_000)
    sparse = rng.integers(0, 10**9, 1_000)  # far above 8x the rows: counted by a sort
    for codes in (dense, sparse):
        counts = SparseCounts.of(codes)
        assert dict(zip(counts.codes.tolist(), counts.n.tolist(), strict=True)) == (
            collections.Counter(codes.tolist())
        )
    parts = [SparseCounts.of(rng.integers(0, k, 300)) for k in (10, 5_000, 70)]
    forward = backward = np.zeros(0, np.int64)
    for part in parts:
        forward = part.add_to(forward)
    for part in reversed(parts):
        backward = part.add_to(backward)
    size = min(len(forward), len(backward))
    assert forward.sum() == 900 and np.array_equal(forward[:size], backward[:size])
    assert SparseCounts.of(np.zeros(0, np.int64)).add_to(forward) is forward
