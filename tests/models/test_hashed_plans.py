"""The probe plans of the hashed methods: row budgets, shared TorchRec tables, chunk layout."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from plexus.models.embeddings import EmbeddingConfig, EmbeddingMethod, build_embedding_tables
from plexus.models.embeddings.hashed import split_rows
from plexus.platform.errors import ConfigError, DataError
from tiny_ctr_data import random_kjt, sparse_features


@given(
    weights=st.lists(st.integers(1, 1000), min_size=1, max_size=20),
    fraction=st.floats(0.0, 1.0),
)
def test_split_rows_is_exact_bounded_and_proportional(weights: list[int], fraction: float) -> None:
    total = max(len(weights), round(fraction * sum(weights)))
    rows = split_rows(total, weights)
    assert sum(rows) == total
    assert all(1 <= r <= w for r, w in zip(rows, weights, strict=True))
    quota = [total * w / sum(weights) for w in weights]
    assert all(r <= max(1, q + 1) for r, q in zip(rows, quota, strict=True))


def _tables(**options):
    return build_embedding_tables(EmbeddingConfig(dim=4, **options), sparse_features())


def test_multiplexed_maps_every_probe_onto_one_torchrec_table() -> None:
    tables = _tables(method=EmbeddingMethod.MULTIPLEXED, budget=0.5, probes=2)
    (config,) = tables.ebc.embedding_bag_configs()
    assert config.num_embeddings == 17  # round(0.5 * 33)
    assert config.feature_names == [f"{f.name}#{p}" for f in sparse_features() for p in (0, 1)]
    assert set(tables.output_dims().values()) == {4}
    probes = tables.remap(random_kjt(batch=5))
    assert probes.keys() == config.feature_names
    assert int(probes.values().max()) < 17


def test_probes_of_one_feature_land_on_different_rows() -> None:
    tables = _tables(method=EmbeddingMethod.MULTIPLEXED, budget=1.0, probes=2)
    ids = torch.arange(10).repeat(4)  # every id of every feature, batch 10
    kjt = random_kjt(batch=10)
    kjt = type(kjt).from_lengths_sync(
        keys=kjt.keys(), values=ids, lengths=torch.ones(40, dtype=torch.int32)
    )
    rows = tables.remap(kjt).to_dict()
    assert not torch.equal(rows["user#0"].values(), rows["user#1"].values())
    assert not torch.equal(rows["user#0"].values(), rows["item#0"].values())


def test_unified_deals_chunks_round_robin_and_concatenates() -> None:
    tables = _tables(
        method=EmbeddingMethod.UNIFIED,
        budget=0.5,
        chunks=2,
        feature_chunks={"hour": 1},
        num_tables=3,
    )
    layout = {c.name: c.feature_names for c in tables.ebc.embedding_bag_configs()}
    assert layout == {
        "shared_0": ["user#0", "item#1", "hour#0"],
        "shared_1": ["user#1", "tags#0"],
        "shared_2": ["item#0", "tags#1"],
    }
    assert tables.table_rows == {"shared_0": 6, "shared_1": 6, "shared_2": 5}
    assert tables.output_dims() == {"user": 8, "item": 8, "tags": 8, "hour": 4}
    out = tables(random_kjt(batch=3)).to_dict()
    assert out["user"].shape == (3, 8) and out["hour"].shape == (3, 4)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"method": "unified", "budget": 0.5, "feature_chunks": {"nope": 2}}, "unknown features"),
        ({"method": "unified", "budget": 0.1, "num_tables": 5}, "num_tables"),
        ({"method": "hashing", "budget": 0.05}, "one row per feature"),
        ({"method": "multiplexed", "chunks": 2}, "embedding.chunks"),
        ({"method": "unified", "feature_chunks": {"user": 0}}, "feature_chunks"),
    ],
)
def test_plan_errors_say_what_to_change(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _tables(**options)


def test_missing_input_feature_is_a_data_error() -> None:
    tables = _tables(method=EmbeddingMethod.HASHING, budget=0.5)
    kjt = random_kjt(batch=2)
    partial = kjt.permute([0, 1, 2])  # drops "hour"
    with pytest.raises(DataError, match="hour"):
        tables(partial)
