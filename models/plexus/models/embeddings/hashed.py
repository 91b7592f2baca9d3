"""Shared machinery of the hashed methods: raw ids -> (feature, probe) keys -> TorchRec tables.

Hashing, multiplexing and Unified Embedding differ only in their probe plan: which (feature,
probe) lookups exist, which physical table each goes to, and how a feature's probes are combined
(summed or concatenated). `HashedEmbeddingTables` turns a plan into

1. one vectorised `hash_bucket` call over every id of every probe (seed = `feature_seed(feature,
   probe)`, bucket count = the probe's table rows), building a `KeyedJaggedTensor` whose keys are
   the probes (`"<feature>#<probe>"`) with the feature's lengths;
2. one `EmbeddingBagCollection` in which several probe keys share a table
   (`EmbeddingBagConfig(feature_names=[...])`), pooling within each probe;
3. a fixed gather that groups each feature's probes and sums or concatenates them.

Unsharded, step 2 runs as one `embedding_bag` per physical table (same result as the EBC, whose
per-key calls would each build a dense gradient of the whole shared table); once
`DistributedModelParallel` has sharded `self.ebc`, the lookups go through it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import NamedTuple

import torch
from plexus.models.embeddings.base import EmbeddingTables, init_weight, pool_padded
from plexus.models.layers.hashing import check_buckets, hash_bucket, seed_tensors
from plexus.models.layers.lookup import keyed_values, pooled_key_blocks
from plexus.platform.errors import ConfigError, DataError
from plexus.platform.feature_spec import Feature
from plexus.platform.hashing import feature_seed
from torch.nn import functional
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor, KeyedTensor


@dataclasses.dataclass(frozen=True)
class Probe:
    """One lookup of `feature` (its `index`-th probe) into physical table `table`.

    `identity`: the table has a row per id, so ids are used as rows unhashed (modulo the rows,
    so a stray out-of-range id cannot crash the lookup).
    """

    feature: str
    index: int
    table: str
    identity: bool = False

    @property
    def key(self) -> str:
        return f"{self.feature}#{self.index}"


class Plan(NamedTuple):
    """A probe plan: the lookups, the rows of each physical table, how a feature's probes
    combine ("sum" or "concat"). Every hashed method is one; `identity_plan` is the full tables'."""

    probes: tuple[Probe, ...]
    table_rows: dict[str, int]
    combine: str


def identity_plan(features: Sequence[Feature]) -> Plan:
    """Full per-field tables as a plan: one unhashed probe per feature into its own table."""
    probes = tuple(Probe(f.name, 0, f"t_{f.name}", identity=True) for f in features)
    return Plan(
        probes, {p.table: f.cardinality for p, f in zip(probes, features, strict=True)}, "concat"
    )


def split_rows(total: int, weights: Sequence[int], minimum: int = 1) -> list[int]:
    """Split `total` rows in proportion to `weights` (largest remainder), each >= `minimum`
    and <= its weight, summing exactly to `total`."""
    n = len(weights)
    if total < minimum * n:
        raise ValueError(f"{total} rows cannot give {n} tables {minimum} row(s) each")
    whole = sum(weights)
    quotas = [total * w / whole for w in weights]
    rows = [min(w, max(minimum, int(q))) for q, w in zip(quotas, weights, strict=True)]
    # Largest remainder of what each table is still owed: a table already lifted to `minimum`
    # above its quota is owed nothing, so it never takes a spare row from a larger quota.
    by_remainder = sorted(range(n), key=lambda i: (quotas[i] - rows[i], weights[i]), reverse=True)
    while sum(rows) < total:
        grew = False
        for i in by_remainder:
            if sum(rows) == total:
                break
            if rows[i] < weights[i]:
                rows[i] += 1
                grew = True
        if not grew:
            raise ValueError(f"{total} rows exceed the weights' sum {whole}")
    while sum(rows) > total:
        i = max(range(n), key=lambda j: rows[j] - quotas[j] if rows[j] > minimum else float("-inf"))
        rows[i] -= 1
    return rows


class HashedEmbeddingTables(EmbeddingTables):
    """Base of methods that hash ids into (possibly shared) tables; subclasses give the plan.

    Subclasses call `_build(probes, table_rows, combine)` at the end of `__init__`, with
    `combine` "sum" (every feature has the same number of probes, output width `dim`) or
    "concat" (output width `num_probes(feature) * dim`).
    """

    def _build(
        self,
        probes: Sequence[Probe],
        table_rows: dict[str, int],
        combine: str,
        *,
        with_tables: bool = True,
    ) -> None:
        """Set up the plan's hashing and output layout, and (`with_tables`) its TorchRec tables
        (a compact serving form stores its tables its own way)."""
        dim = self.config.dim
        keys = [p.key for p in probes]
        if len(set(keys)) != len(keys):
            raise ValueError(f"duplicate probes in plan: {keys}")
        for table, rows in table_rows.items():
            try:
                check_buckets(rows)
            except ValueError as exc:
                raise ConfigError(f"embedding table {table!r}: {exc}") from exc
        # TorchRec returns pooled outputs table by table, so order the probes that way.
        order = list(table_rows)
        probes = sorted(probes, key=lambda p: order.index(p.table))
        self.probes = tuple(probes)
        self.combine = combine
        if with_tables:
            self.ebc = EmbeddingBagCollection(
                tables=[
                    EmbeddingBagConfig(
                        name=table,
                        embedding_dim=dim,
                        num_embeddings=rows,
                        feature_names=[p.key for p in probes if p.table == table],
                        pooling=self.config.pooling_type,
                        init_fn=init_weight,
                    )
                    for table, rows in table_rows.items()
                ]
            )
        self.table_rows = dict(table_rows)
        self._probes_per_table = {t: sum(p.table == t for p in probes) for t in table_rows}
        feature_index = {name: i for i, name in enumerate(self.feature_names)}
        seed_lo, seed_hi = seed_tensors([feature_seed(p.feature, p.index) for p in probes])
        as_long = lambda xs: torch.tensor(xs, dtype=torch.int64)  # noqa: E731
        # Plan tensors are buffers (not state): they follow .to(device) but are rebuilt from config.
        self.register_buffer(
            "_probe_feature", as_long([feature_index[p.feature] for p in probes]), persistent=False
        )
        self.register_buffer("_seed_lo", seed_lo, persistent=False)
        self.register_buffer("_seed_hi", seed_hi, persistent=False)
        self.register_buffer(
            "_buckets", as_long([table_rows[p.table] for p in probes]), persistent=False
        )
        self.register_buffer(
            "_identity", torch.tensor([p.identity for p in probes]), persistent=False
        )
        # Probes regrouped by feature (probe index order) for the output.
        position = {p.key: i for i, p in enumerate(probes)}
        order: list[int] = []
        self._widths: dict[str, int] = {}
        for name in self.feature_names:
            mine = sorted((p for p in probes if p.feature == name), key=lambda p: p.index)
            if not mine:
                raise ValueError(f"feature {name!r} has no probe")
            order.extend(position[p.key] for p in mine)
            self._widths[name] = dim if combine == "sum" else len(mine) * dim
        counts = {sum(p.feature == name for p in probes) for name in self.feature_names}
        if combine == "sum" and len(counts) != 1:
            raise ValueError("combine='sum' needs the same number of probes for every feature")
        self._probes_per_feature = max(counts)
        self._reorder = order != list(range(len(order)))
        self.register_buffer("_probe_order", as_long(order), persistent=False)

    def output_dims(self) -> dict[str, int]:
        return dict(self._widths)

    def remap(self, features: KeyedJaggedTensor) -> KeyedJaggedTensor:
        """Raw ids (one key per feature) -> hashed rows (one key per probe), same lengths."""
        _, rows, lengths = self.probe_ids(features)
        return KeyedJaggedTensor(
            keys=[p.key for p in self.probes],
            values=rows,
            lengths=lengths.to(features.lengths().dtype),
            stride=features.stride(),
        )

    def probe_ids(
        self, features: KeyedJaggedTensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Raw ids regrouped per probe, probe-major in `self.probes` order, their hashed rows
        (both (N,)) and the probes' bag lengths (P * B,) int64."""
        keys = features.keys()
        batch = features.stride()
        try:
            source = torch.tensor(
                [keys.index(n) for n in self.feature_names], device=self._buckets.device
            )
        except ValueError as exc:
            raise DataError(
                f"sparse input lacks a feature: needs {list(self.feature_names)}, got {keys}"
            ) from exc
        lengths = features.lengths().view(len(keys), batch).to(torch.int64)
        key_lengths = lengths.sum(1)
        key_starts = torch.cumsum(key_lengths, 0) - key_lengths
        src = source[self._probe_feature]  # (P,) input key of each probe
        seg_len = key_lengths[src]
        out_starts = torch.cumsum(seg_len, 0) - seg_len
        total = int(seg_len.sum())
        shift = torch.repeat_interleave(key_starts[src] - out_starts, seg_len, output_size=total)
        ids = features.values()[shift + torch.arange(total, device=shift.device)]
        expand = lambda t: torch.repeat_interleave(t, seg_len, output_size=total)  # noqa: E731
        buckets = expand(self._buckets)
        rows = hash_bucket(
            ids, expand(self._seed_lo), expand(self._seed_hi), buckets, exportable=False
        )
        if bool(self._identity.any()):
            rows = torch.where(expand(self._identity), torch.remainder(ids, buckets), rows)
        return ids, rows, lengths[src].flatten()

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        probes = self.remap(features)
        if type(self.ebc) is EmbeddingBagCollection:
            pooled = self._pool_per_table(probes)  # (P, B, dim)
        else:  # sharded by DistributedModelParallel: let TorchRec's kernels do the lookups
            pooled = self._pool_torchrec(probes)
        return self._keyed(self._combine(pooled))

    def _pool_torchrec(self, probes: KeyedJaggedTensor) -> torch.Tensor:
        """Pooled probe lookups through the (possibly sharded) EBC: (P, B, dim), table order."""
        flat = keyed_values(self.ebc(probes), [p.key for p in self.probes])  # (B, P * dim)
        return flat.view(flat.shape[0], len(self.probes), -1).transpose(0, 1)

    def _pool_per_table(self, probes: KeyedJaggedTensor) -> torch.Tensor:
        """What `self.ebc(probes).values()` computes, as (P, B, dim), with one `embedding_bag` per
        table instead of one per probe key: the unsharded EBC's per-key calls each build a dense
        gradient of the whole shared table, which made multiplexing 2-4x slower than full tables.
        """
        blocks, first = [], 0
        for table, count in self._probes_per_table.items():
            blocks.append((first, count, self.ebc.embedding_bags[table].weight))
            first += count
        pooled = pooled_key_blocks(probes, blocks, self.config.pooling)  # (count * B, dim) each
        flat = pooled[0] if len(pooled) == 1 else torch.cat(pooled, dim=0)  # probe-major
        return flat.view(len(self.probes), probes.stride(), -1)

    def forward_padded(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        pooled = []
        for table, index, rows in self.padded_rows(ids):
            weight = self.ebc.embedding_bags[table].weight
            vectors = functional.embedding(rows, weight)  # (B, Pt, L, dim)
            feature = self._probe_feature[index]
            pooled.append(pool_padded(vectors, lengths[:, feature], self.config.pooling))
        return self._combine(torch.cat(pooled, dim=1).transpose(0, 1))  # (P, B, dim)

    def padded_rows(self, ids: torch.Tensor) -> list[tuple[str, list[int], torch.Tensor]]:
        """Table by table (the EBC's column order): its probes' indices and their rows
        (B, Pt, L) for raw padded ids (B, F, L), hashed in the exportable graph."""
        out = []
        for table in self.table_rows:
            index = [i for i, p in enumerate(self.probes) if p.table == table]
            raw = ids[:, self._probe_feature[index], :]  # (B, Pt, L)
            rows = hash_bucket(
                raw,
                self._seed_lo[index].unsqueeze(1),
                self._seed_hi[index].unsqueeze(1),
                self.table_rows[table],
            )
            if any(self.probes[i].identity for i in index):
                unhashed = torch.remainder(raw, self.table_rows[table])
                rows = torch.where(self._identity[index].unsqueeze(1), unhashed, rows)
            out.append((table, index, rows))
        return out

    def _pooled_output(
        self, pooled: list[torch.Tensor], lengths: torch.Tensor, batch: int
    ) -> torch.Tensor:
        """Per-probe pooled sums, each (probes_i * B, D) in probe order -> the features'
        values (B, sum(output_dims())): `mean` pooling applied, probes combined per feature."""
        flat = torch.cat(pooled, dim=0)
        if self.config.pooling == "mean":
            flat = flat / lengths.clamp(min=1).unsqueeze(1).to(flat.dtype)
        return self._combine(flat.view(len(self.probes), batch, -1))

    def _keyed(self, values: torch.Tensor) -> KeyedTensor:
        """(B, sum(output_dims())) values as the features' `KeyedTensor`."""
        return KeyedTensor(
            keys=list(self.feature_names),
            length_per_key=[self._widths[n] for n in self.feature_names],
            values=values,
        )

    def _combine(self, pooled: torch.Tensor) -> torch.Tensor:
        """(P, B, dim) probe outputs in table order -> (B, sum(output_dims)): each feature's
        probes summed ("sum") or concatenated in probe order ("concat")."""
        if self._reorder:
            pooled = pooled.index_select(0, self._probe_order)
        batch = pooled.shape[1]
        if self.combine == "sum":
            fields = pooled.reshape(len(self.feature_names), self._probes_per_feature, batch, -1)
            return fields.sum(1).transpose(0, 1).reshape(batch, -1)
        return pooled.transpose(0, 1).reshape(batch, -1)
