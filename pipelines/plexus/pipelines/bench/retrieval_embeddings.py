"""`plexus bench embeddings --task retrieval`: Recall@20 / NDCG@20 against embedding bytes for
every embedding method of the two-tower retrieval model.

One interaction log (Gowalla in the LightGCN format, or MovieLens) is ingested once; each
(method, budget, seed) then trains the retrieval model through the job's own training step
(`plexus.pipelines.retrieval.job.train_model`: Ray Train, or in-process with `use_ray=false`)
with only the `embedding:` section and `train.seed` changed, and is evaluated by the job's
full-ranking evaluation (`retrieval.evaluate.evaluate_tower`: train items excluded, LightGCN
protocol) on the test split. The plan is the CTR benchmark's (`bench.embeddings`): `full` at
budget 1, `hashing`, `multiplexed` and `unified` at every budget, learned methods on their
bases. Each method is first tried for one epoch on a tiny planted log and skipped, with the
reason in `results.md`, when the retrieval loop cannot train it. OptEmbed and DNIS search on
the validation hold-out (`retrieval_stages`: the log needs one). DSL trains single-stage
on the towers' sparse gradients (`dsl:full` at budget 1 is the official density 0.5; below 1,
the density whose row-compressed bytes fit the budget); magnitude pruning trains its dense
stage, then fine-tunes the pruned tables (each row trains its own dense stage: the CTR job's
sharing of that stage between budgets is not done here). Multiplexed tables use
`probes` summed probes (2 by default): each tower has a single id feature, so one probe would be
plain hashing.

`bytes` is measured on the trained model: both towers' tables (user and item) in the form they
are served from, built (`EmbeddingTables.compact()`: DSL's row-compressed values, indices and
pointers) and counted array by array; the history projection and side-feature buffers are not
counted. `step_ms`: wall time of a training step (mean over epochs), `update_ms` its backward,
optimiser steps and `after_step` hooks (DSL's masks), the part where methods differ. A
`popular` row (the most popular unseen training items, `retrieval.compare.most_popular`) is
the reference measured on the same test users; it stores no embeddings (`bytes` 0).

Outputs in `out/`: `results.json` (one row per run), `results.md` (with `--seeds` > 1 first the
mean ± standard deviation of each method and budget over its seeds; each row's `recall - full`
is against the full tables of its own seed), `pareto.png` (Recall@20 against bytes, log x); one
parent MLflow run with a nested run per row.

Example:
    >>> rows = bench_retrieval_embeddings(Path("../shared/data/gowalla"), Path("runs/bench/ret"),
    ...                                   budgets=(1 / 4, 1 / 16), epochs=3, dim=64)
    >>> rows[0]["method"], rows[0]["bytes"], rows[0]["recall@20"]
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from plexus.models.embeddings import EmbeddingConfig, EmbeddingMethod, protocol
from plexus.models.threads import restores_cpu_state, use_cpu_threads
from plexus.pipelines import tracking
from plexus.pipelines.bench.embeddings import (
    BUDGETS,
    LEARNED,
    METHODS,
    Seeds,
    budget_label,
    pareto_figure,
    plan_rows,
    seeds_label,
)
from plexus.pipelines.bench.report import markdown_table, publish
from plexus.pipelines.config import TrackingConfig, config_path
from plexus.platform import config as config_io
from plexus.platform.errors import ConfigError

KS = (20,)
ROW_KEYS = (
    "method",
    "base",
    "budget",
    "params",
    "bytes",
    "recall@20",
    "ndcg@20",
    "epochs",
    "seconds",
    "seed",
)
DEFAULT_METHODS = ("full", "hashing", "multiplexed", "unified", *LEARNED)
POPULAR = "popular"
EXPERIMENT = "bench-retrieval-embeddings"


@restores_cpu_state()
def bench_retrieval_embeddings(
    data: Path,
    out: Path,
    *,
    fmt: str = "lightgcn",
    methods: Sequence[str] = DEFAULT_METHODS,
    budgets: Sequence[float] = BUDGETS,
    seeds: Seeds = 1,
    chunks: int = 2,
    probes: int = 2,
    epochs: int | None = None,
    dim: int | None = None,
    config: str | Path | None = None,
    overrides: Sequence[str] = (),
    tracking_uri: str | None = None,
    force: bool = False,
) -> list[dict[str, Any]]:
    """Train the retrieval model for every (method, budget, seed) on one ingest of `data`;
    write `results.json` / `results.md` / `pareto.png` to `out` and return the rows.

    `fmt` is lightgcn (a folder with train.txt / test.txt) or movielens (a ratings file); the
    job starts from `config` (a bundled config name or a YAML path; default: the bundled
    retrieval config of `fmt`) plus `overrides` (`section.key=value`), then `epochs`
    (`train.epochs`) and `dim` (`model.dim`, the tables' feature width) where given. MLflow
    logs to `tracking_uri`, else the config's `tracking.uri`, else `out/mlflow.db`. Trained
    rows are reused on a re-run (their `model.pt`) unless `force`.
    """
    from plexus.pipelines.retrieval.job import load_data

    out = Path(out).resolve()
    base, configured = _base_job(fmt, Path(data), out, config, overrides, epochs, dim, tracking_uri)
    planned = plan_rows(methods, budgets, seeds, chunks, base.model.dim, configured)
    plan, skipped = _runnable(planned, base.model.dim, probes)
    uri = tracking.configure(base.tracking.uri)
    use_cpu_threads(base.train.threads)
    rows: list[dict[str, Any]] = []
    experiment = base.tracking.experiment
    params = {
        **config_io.flatten(base),
        "bench.methods": ",".join(dict.fromkeys(p[0] for p in plan)),
        "bench.budgets": ",".join(budget_label(b) for b in sorted(set(budgets), reverse=True)),
        "bench.seeds": seeds_label(seeds),
        "bench.skipped": ",".join(skipped) or "none",
    }
    with tracking.run(experiment, base.name, params=params) as parent:
        data_set = load_data(base, log=True)
        full_bytes = _full_bytes(base, data_set)
        with tracking.run(experiment, f"{base.name}-{POPULAR}", nested=True):
            rows.append(_popular_row(data_set))
            tracking.log_metrics("test", {k: rows[-1][k] for k in _metric_keys()})
        print(_progress(rows[-1]), flush=True)
        for label, budget, embedding, seed in plan:
            rows.append(_train_row(base, data_set, label, budget, embedding, seed, force=force))
            rows[-1]["bytes_fraction"] = rows[-1]["bytes"] / full_bytes
            print(_progress(rows[-1]), flush=True)
        markdown = results_markdown(
            base.name, rows, skipped, command=_command(fmt, data, out, methods, budgets, seeds,
                                                       epochs, dim, config, overrides)
        )  # fmt: skip
        title = f"{base.name}: test Recall@20 vs embedding bytes"
        publish(
            out,
            rows,
            markdown=markdown,
            figure=recall_pareto_figure(rows, title=title),
            metrics=_headline_metrics(rows),
            label="bench retrieval",
            run_id=parent.info.run_id,
            uri=uri,
        )
    return rows


def _base_job(
    fmt: str,
    data: Path,
    out: Path,
    config: str | Path | None,
    overrides: Sequence[str],
    epochs: int | None,
    dim: int | None,
    tracking_uri: str | None,
) -> tuple[Any, EmbeddingConfig | None]:
    """The retrieval job every row starts from (the config with `data`, the bench's output
    folder and tracking, and the epochs / width asked for; no embedding: each row sets its
    own), and the config's `embedding:` (a learned method's rows keep its options)."""
    from plexus.pipelines.retrieval.config import bundled_retrieval_config, load_retrieval_config

    if fmt not in ("lightgcn", "movielens"):
        raise ConfigError(
            f"--format {fmt!r} with --task retrieval: use lightgcn (a folder with train.txt and "
            "test.txt, e.g. ../shared/data/gowalla) or movielens (a ratings file)"
        )
    if not data.exists():
        raise ConfigError(f"--data {data}: no such file or folder")
    source = config_path(config) if config is not None else bundled_retrieval_config(fmt)
    extra = [f"data.path={data.resolve()}", f"output={out / 'runs'}", *overrides]
    extra += [f"train.epochs={epochs}"] if epochs is not None else []
    extra += [f"model.dim={dim}"] if dim is not None else []
    job = load_retrieval_config(source, extra)
    # Not MLFLOW_TRACKING_URI alone: MLflow sets it once a run starts (see bench.embeddings).
    uri = tracking_uri or job.tracking.uri or f"sqlite:///{out / 'mlflow.db'}"
    base = dataclasses.replace(
        job,
        name=f"bench-retrieval-{job.name}",
        embedding=None,
        tracking=TrackingConfig(uri=uri, experiment=EXPERIMENT),
    )
    return base, job.embedding


def _runnable(
    plan: Sequence[tuple[str, float, EmbeddingConfig, int]], dim: int, probes: int
) -> tuple[list[tuple[str, float, EmbeddingConfig, int]], list[str]]:
    """The planned rows the retrieval towers can train (multiplexed with `probes` probes), and
    `method:base (reason)` for each skipped method. Each method is tried first: one epoch of
    the retrieval loop on a tiny planted log at its first planned budget (a method whose
    training fails on the towers is skipped with its error)."""
    from plexus.models.retrieval import TwoTowerConfig
    from plexus.pipelines.retrieval.synthetic import planted_interests
    from plexus.pipelines.retrieval.train import RetrievalTrainConfig, train_two_tower

    tiny = planted_interests(num_users=24, num_groups=3, items_per_group=8, per_user=6)[0]
    model = TwoTowerConfig(dim=dim, history_len=4)
    train = RetrievalTrainConfig(epochs=1, batch_size=32, num_negatives=8, threads=1)
    kept, verdicts = [], {}
    for label, budget, embedding, seed in plan:
        if embedding.method is EmbeddingMethod.MULTIPLEXED:
            embedding = dataclasses.replace(embedding, probes=probes)
        if label not in verdicts:
            try:
                train_two_tower(tiny, model, train, embedding=embedding)
                verdicts[label] = None
            except Exception as error:  # noqa: BLE001  (the reason the row is skipped)
                first = str(error).strip().splitlines()[0] if str(error).strip() else ""
                verdicts[label] = f"{label} ({type(error).__name__}: {first})"
        if verdicts[label] is None:
            kept.append((label, budget, embedding, seed))
    skipped = [v for v in verdicts.values() if v is not None]
    if not kept:
        raise ConfigError(f"--methods: none can train the retrieval towers: {skipped}")
    return kept, skipped


def _full_bytes(base: Any, data: Any) -> int:
    """Serving bytes of the full per-id tables of both towers: the denominator of the fractions."""
    from plexus.pipelines.retrieval.train import build_two_tower

    model = build_two_tower(data, base.model, EmbeddingConfig(dim=base.model.dim))
    return protocol.embedding_bytes(model)


def _train_row(
    base: Any,
    data: Any,
    label: str,
    budget: float,
    embedding: EmbeddingConfig,
    seed: int,
    *,
    force: bool,
) -> dict[str, Any]:
    """Train (or reuse) one model in a nested MLflow run; evaluate it on the test split."""
    from plexus.pipelines.retrieval.evaluate import evaluate_tower
    from plexus.pipelines.retrieval.job import MODEL_FILE, run_dir, train_model

    job = dataclasses.replace(
        base, embedding=embedding, train=dataclasses.replace(base.train, seed=seed)
    )
    folder = run_dir(job)
    if force and folder.exists():
        shutil.rmtree(folder)
    method, _, on = label.partition(":")
    name = f"{base.name}-{label}@{budget_label(budget)}-seed{seed}"
    with tracking.run(
        base.tracking.experiment, name, params=config_io.flatten(job), nested=True
    ) as run:
        reused = (folder / MODEL_FILE).is_file()
        start = time.perf_counter()
        model, history = train_model(job, data, folder)
        train_wall = time.perf_counter() - start
        for record in history:
            values = {k: v for k, v in record.items() if k != "epoch"}
            tracking.log_metrics("train", values, step=int(record["epoch"]))
        start = time.perf_counter()
        metrics = evaluate_tower(model, data, ks=KS)
        eval_seconds = time.perf_counter() - start
        tables = list(protocol.embedding_tables(model))
        row = {
            "method": method,
            "base": on,
            "budget": budget,
            "budget_label": budget_label(budget),
            "chunks": embedding.chunks,
            "probes": embedding.probes,
            "dim": embedding.dim,
            "params": sum(t.num_parameters() for t in tables),
            "bytes": sum(t.compact().num_bytes() for t in tables),
            **{k: float(metrics[k]) for k in _metric_keys()},
            "epochs": len(history),
            "seconds": sum(float(h.get("epoch_seconds", 0.0)) for h in history),
            **{key: _mean(history, key) for key in ("step_ms", "update_ms")},
            "train_wall_seconds": train_wall,
            "eval_seconds": eval_seconds,
            "reused": reused,
            "seed": seed,
            "run_id": run.info.run_id,
        }
        tracking.log_metrics("test", {k: row[k] for k in _metric_keys()})
        tracking.log_metrics("embedding", {"bytes": row["bytes"], "params": row["params"]})
    return row


def _mean(history: Sequence[dict[str, float]], key: str) -> float:
    """The mean of `key` over the epochs that recorded it (NaN for models trained before)."""
    values = [float(h[key]) for h in history if key in h]
    return float(np.mean(values)) if values else float("nan")


def _popular_row(data: Any) -> dict[str, Any]:
    """The most popular unseen training items for every test user: the reference row."""
    from plexus.pipelines.retrieval.compare import most_popular
    from plexus.pipelines.retrieval.evaluate import ranking_metrics, test_users

    start = time.perf_counter()
    users = test_users(data)
    by_popularity = np.argsort(-data.item_popularity()[1:], kind="stable") + 1
    sums = dict.fromkeys(_metric_keys(), 0.0)
    for lo in range(0, users.size, 2048):
        chunk = users[lo : lo + 2048]
        top = most_popular(by_popularity, data, chunk, max(KS))
        for key, values in ranking_metrics(top, data, chunk, KS).items():
            sums[key] += float(values.sum())
    return {
        "method": POPULAR,
        "base": "",
        "budget": 0.0,
        "budget_label": "",
        "params": 0,
        "bytes": 0,
        **{k: v / max(users.size, 1) for k, v in sums.items()},
        "epochs": 0,
        "seconds": time.perf_counter() - start,
        "seed": 0,
    }


def _metric_keys() -> list[str]:
    return [f"{m}@{k}" for k in KS for m in ("recall", "ndcg")]


def results_markdown(
    name: str, rows: Sequence[dict[str, Any]], skipped: Sequence[str], *, command: str
) -> str:
    """The `results.md` text: the means over seeds (when a row has several), every row (recall
    against full of the same seed, bytes against full), then the skipped methods."""
    fulls = {r["seed"]: r for r in rows if r["method"] == EmbeddingMethod.FULL.value}
    shown = [
        {**r, "params": f"{r['params']:,}", "bytes": f"{r['bytes']:,}",
         "bytes / full": "" if "bytes_fraction" not in r else f"{r['bytes_fraction']:.4f}",
         "recall@20": f"{r['recall@20']:.4f}", "ndcg@20": f"{r['ndcg@20']:.4f}",
         "recall - full": "" if r["seed"] not in fulls
         else f"{r['recall@20'] - fulls[r['seed']]['recall@20']:+.4f}",
         "seconds": f"{r['seconds']:.0f}",
         **{k: f"{r[k]:.1f}" if k in r else "" for k in ("step_ms", "update_ms")}}
        for r in rows
    ]  # fmt: skip
    columns = ["method", "base", "budget_label", "seed", "chunks", "probes", "params", "bytes",
               "bytes / full", "recall@20", "ndcg@20", "recall - full", "epochs", "seconds",
               "step_ms", "update_ms"]  # fmt: skip
    lines = [
        f"## {name}: retrieval quality against embedding bytes\n",
        f"`{command}`\n",
        *_over_seeds(rows),
        markdown_table(shown, columns),
        "",
        "`bytes`: both towers' tables (user and item) in their serving form, measured on the "
        "trained model; `seconds`: training time (sum of epochs); `step_ms`: a training step, "
        "`update_ms` its backward and updates (mean over epochs); Recall@20 / NDCG@20 on the "
        f"test split, train items excluded. `{POPULAR}`: the most popular unseen training items "
        "(no embeddings), measured on the same users.\n",
    ]
    if skipped:
        lines += ["Skipped: " + "; ".join(skipped) + ".\n"]
    return "\n".join(lines)


def _over_seeds(rows: Sequence[dict[str, Any]]) -> list[str]:
    """A table of mean ± std (over seeds) of each (method, base, budget) trained with more than
    one seed, with its recall against full's mean; no lines when every row has one seed."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for row in rows:
        if row["method"] != POPULAR:
            groups.setdefault((row["method"], row["base"], row["budget_label"]), []).append(row)
    if all(len(group) < 2 for group in groups.values()):
        return []
    full = groups.get((EmbeddingMethod.FULL.value, "", budget_label(1.0)))
    full_recall = float(np.mean([r["recall@20"] for r in full])) if full else None

    def spread(group: list[dict[str, Any]], key: str) -> str:
        values = [r[key] for r in group]
        std = f" ± {np.std(values, ddof=1):.4f}" if len(values) > 1 else ""
        return f"{np.mean(values):.4f}{std}"

    summary = [
        {"method": method, "base": base, "budget_label": budget, "seeds": len(group),
         "recall@20": spread(group, "recall@20"), "ndcg@20": spread(group, "ndcg@20"),
         "recall - full": "" if full_recall is None
         else f"{np.mean([r['recall@20'] for r in group]) - full_recall:+.4f}"}
        for (method, base, budget), group in groups.items()
    ]  # fmt: skip
    columns = ["method", "base", "budget_label", "seeds", "recall@20", "ndcg@20", "recall - full"]
    return ["Mean ± standard deviation over seeds (the sample's, as the CTR benchmark gives):\n",
            markdown_table(summary, columns), "", "Every row:\n"]  # fmt: skip


def recall_pareto_figure(rows: Sequence[dict[str, Any]], *, title: str) -> Any:
    """Test Recall@20 against embedding bytes (log x): the CTR benchmark's Pareto plot on the
    retrieval metric, with the most-popular baseline as a dashed line."""
    points = [
        {**r, "test_auc": r["recall@20"], "auc_std": 0.0} for r in rows if r["method"] != POPULAR
    ]
    figure = pareto_figure(points, title=title)
    ax = figure.axes[0]
    ax.set_ylabel("test Recall@20")
    for row in rows:
        if row["method"] == POPULAR:
            ax.axhline(row["recall@20"], color="grey", linestyle="--", linewidth=1,
                       label=f"{POPULAR} ({row['recall@20']:.3f})")  # fmt: skip
    ax.legend(fontsize=8)
    return figure


def _headline_metrics(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    metrics = {}
    for r in rows:
        label = r["method"] + (f"_{r['base']}" if r["base"] else "")
        if r["method"] != POPULAR:
            label += "_" + budget_label(r["budget"]).replace("/", "of")
        metrics[f"{label}_recall_at_20"] = r["recall@20"]
        metrics[f"{label}_ndcg_at_20"] = r["ndcg@20"]
    return metrics


def _progress(row: dict[str, Any]) -> str:
    label = row["method"] + (":" + row["base"] if row["base"] else "")
    return (
        f"[bench retrieval] {label:16s} budget {row['budget_label'] or '-':>5s}: "
        f"Recall@20 {row['recall@20']:.4f}  NDCG@20 {row['ndcg@20']:.4f}  "
        f"bytes {row['bytes']:,}  {row['seconds']:.0f} s"
    )


def _command(
    fmt: str,
    data: Path,
    out: Path,
    methods: Sequence[str],
    budgets: Sequence[float],
    seeds: Seeds,
    epochs: int | None,
    dim: int | None,
    config: str | Path | None,
    overrides: Sequence[str],
) -> str:
    """The command line that reproduces this benchmark."""
    parts = [
        f"plexus bench embeddings --task retrieval --format {fmt} --data {data} --out {out}",
        f"--methods {','.join(dict.fromkeys(methods))}",
        f"--budgets {','.join(budget_label(b) for b in sorted(set(budgets), reverse=True))}",
        f"--seeds {seeds_label(seeds)}",
    ]
    if config is not None:
        parts.append(f"--config {config}")
    parts += [f"--set {o}" for o in overrides]
    parts += [f"--set train.epochs={epochs}"] if epochs is not None else []
    parts += [f"--set model.dim={dim}"] if dim is not None else []
    return " ".join(parts)


__all__ = ["DEFAULT_METHODS", "METHODS", "ROW_KEYS", "bench_retrieval_embeddings"]
