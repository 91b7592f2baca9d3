"""`plexus bench embeddings`: test AUC against embedding parameters for every embedding method.

One dataset is ingested once; each (method, budget, seed) then trains through the real job
(`plexus.pipelines.train.job.train`: Ray Train, early stopping on validation AUC, test metrics)
with only the `embedding:` section and `train.seed` changed. `full` runs at budget 1 only (it
has no smaller size); `hashing`, `multiplexed` and `unified` run at every budget. The benchmark
is one parent MLflow run with a nested run per row; `results.json`, `results.md` and
`pareto.png` are written to `out/` and logged as artifacts of the parent.

Parameters are measured, never derived: `params` counts every embedding table of the model
(the `dim`-wide tables and, for FM/DeepFM, the width-1 first-order tables) in the form it is
served from, `bytes` that form's size (float32 values plus any index arrays: a learned method's
compact tables and their remaps).

Learned methods run on a base (`base` in the rows): `optembed` means `optembed:full` and
`optembed:unified`. At budget b < 1, OptEmbed's search keeps the model within b of the full
tables' bytes (`search_budget`); on a unified base it prunes a Unified Embedding of 0.95b (a
shared row is rarely pruned for every feature, so the search must fit b with all rows kept). After
the planned rows, hashing and Unified Embedding also train at the bytes each OptEmbed row
reached (rows with `matched_to`), so the Pareto plot compares them at the same size. DSL and magnitude pruning (`dsl`,
`magnitude_pruning`, on `full` and `unified`) run at a byte budget of the full tables (index
overhead included), and every learned row also gets the lookup latency of its served (compact)
tables against its dense ones (`bench.lookup`, a section of `results.md`). Unified Embedding uses `chunks` chunks of `dim / chunks` per feature, so its feature
width equals the full table's `dim`; since `embedding.budget` counts rows of the chunk width, the
requested fraction `b` is passed as `budget = b * chunks` (fewer chunks where that exceeds 1,
e.g. one chunk at b = 1).

Example:
    >>> rows = bench_embeddings("criteo", Path("/data/criteo_sample"), Path("runs/bench/emb"),
    ...                         budgets=(1, 1 / 16), seeds=3)
    >>> rows[0]["method"], rows[0]["params"], rows[0]["test_auc"]
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from plexus.models.backbones import build_ctr_model
from plexus.models.embeddings import (
    EmbeddingConfig,
    EmbeddingMethod,
    learned_methods,
    learned_options,
)
from plexus.models.threads import restores_cpu_state, use_cpu_threads
from plexus.pipelines import plots, tracking
from plexus.pipelines.bench.lookup import add_lookup_latency, lookup_section
from plexus.pipelines.bench.report import markdown_table, publish
from plexus.pipelines.bench.throughput import embedding_throughput, load_batches
from plexus.pipelines.config import (
    JobConfig,
    TrackingConfig,
    config_path,
    load_job_config,
    tuned_config,
)
from plexus.pipelines.ingest import DataConfig, DataFormat, SplitConfig
from plexus.pipelines.jobs import log_ingest, run_ingest
from plexus.pipelines.train.job import train
from plexus.platform.config import from_dict, to_dict
from plexus.platform.errors import ConfigError

METHODS = tuple(m.value for m in EmbeddingMethod)
# Each learned method's rows, on the full tables and on Unified Embedding.
LEARNED = {
    m.value: (EmbeddingMethod.FULL.value, EmbeddingMethod.UNIFIED.value) for m in learned_methods()
}
MATCHED = ("hashing", "unified")  # trained again at the bytes a learned row reached
# The methods a learned row can be matched with: neither learned nor the full tables.
PLAIN = tuple(m for m in METHODS if m not in LEARNED and m != EmbeddingMethod.FULL.value)
BUDGETS = (1.0, 1 / 4, 1 / 16, 1 / 64)
Seeds = int | Sequence[int]  # a count N (seeds 0 .. N-1) or the seeds themselves
ROW_KEYS = (
    "method",
    "budget",
    "params",
    "bytes",
    "test_auc",
    "test_logloss",
    "examples_per_s",
    "seed",
    "base",
)
_SPLIT_NAMES = {"valid": ("dev", "valid", "validation"), "test": ("test",)}


def bench_embeddings(
    fmt: str,
    data: Path,
    out: Path,
    *,
    methods: Sequence[str] = METHODS,
    budgets: Sequence[float] = BUDGETS,
    seeds: Seeds = 3,
    chunks: int = 2,
    config: str | Path | None = None,
    overrides: Sequence[str] = (),
    tracking_uri: str | None = None,
    name: str | None = None,
    force: bool = False,
    throughput_batches: int = 40,
    matched: Sequence[str] = MATCHED,
) -> list[dict[str, Any]]:
    """Train every (method, budget, seed) on one ingest of `data`; write and return the rows.

    `fmt` is criteo | avazu | movielens; `data` a folder of given splits (train/dev/test files,
    or the MovieLens folder) or one file, split 80/10/10 with split seed 0. The job starts from
    `config` (a bundled config name or a YAML path; default: the tuned config of `fmt`'s dataset
    and backbone when one is bundled, else its bundled config) plus
    `overrides` (`section.key=value`). MLflow logs to `tracking_uri`, else the config's
    `tracking.uri`, else `out/mlflow.db`. Finished rows are reused unless `force` (a re-run
    resumes a crashed benchmark). Returns rows with the keys `ROW_KEYS` (+ dataset, chunks, ...).

    `examples_per_s` is each job's median-epoch throughput; after the trainings every
    (method, budget) also trains `throughput_batches` batches back to back with the others in
    this process (`b2b_examples_per_s`), and the speed ratios against `full` come from that
    (0 skips it and uses the jobs' figures).

    `matched`: the plain methods trained again at each learned row's bytes (empty: none, when
    those rows are known from another run and each would cost as much as a full-table row).
    """
    unknown = [m for m in matched if m not in PLAIN]
    if unknown:
        raise ConfigError(f"--match {unknown[0]!r}: choose from {', '.join(PLAIN)} (or '')")
    base = _base_job(fmt, Path(data), Path(out).resolve(), config, overrides, tracking_uri, name)
    plan = plan_rows(methods, budgets, seeds, chunks, base.embedding.dim, base.embedding)
    uri = tracking.configure(base.tracking.uri)

    rows: list[dict[str, Any]] = []
    out = Path(out).resolve()
    experiment = base.tracking.experiment
    with tracking.run(
        experiment, f"{base.name}", params=_bench_params(base, plan, seeds)
    ) as parent:
        with tracking.run(experiment, f"{base.name}-ingest", nested=True):
            ingested = run_ingest(base, progress=False)
            log_ingest(ingested)
        full_params = _embedding_parameters(
            dataclasses.replace(base, embedding=EmbeddingConfig(dim=base.embedding.dim)), ingested
        )
        configs: dict[str, EmbeddingConfig] = {}
        model_dirs: dict[int, Path] = {}  # row -> its trained model folder

        def run(method: str, budget: float, embedding: EmbeddingConfig, seed: int) -> None:
            job = dataclasses.replace(
                base, embedding=embedding, train=dataclasses.replace(base.train, seed=seed)
            )
            result = train(job, ingested, force=force, nested=True)
            rows.append(
                _row(base.name, method, budget, embedding, seed, full_params, result, job, ingested)
            )
            configs[_key(rows[-1])] = embedding
            model_dirs[len(rows) - 1] = result.output / "model"
            print(_progress(rows[-1]), flush=True)

        for method, budget, embedding, seed in plan:
            run(method, budget, embedding, seed)
        floor = len(ingested.spec.sparse) * base.embedding.dim  # a row per feature
        learned_rows = [r for r in rows if r["base"]]
        for method, fraction, embedding, learned in plan_matched(
            learned_rows, matched, full_params, floor, base.embedding.dim, chunks
        ):
            run(method, fraction, embedding, learned["seed"])
            rows[-1]["matched_to"] = f"{learned['method']}:{learned['base']}"
            rows[-1]["matched_budget"] = learned["budget"]
        if throughput_batches > 0:
            _add_back_to_back_throughput(rows, base, configs, ingested, throughput_batches)
        learned_dirs = {i: d for i, d in model_dirs.items() if rows[i]["base"]}
        add_lookup_latency(
            rows, learned_dirs, ingested.shards("test"), ingested.spec, threads=_threads(base)
        )
        summary = summarise(rows)
        markdown = results_markdown(
            base.name,
            rows,
            summary,
            command=_command(
                fmt, data, out, methods, budgets, seeds, chunks, config, overrides, matched
            ),
        )
        markdown += lookup_section(rows)
        publish(
            out,
            rows,
            markdown=markdown,
            figure=pareto_figure(summary, title=f"{base.name}: test AUC vs embedding bytes"),
            metrics=_headline_metrics(summary),
            label="bench embeddings",
            run_id=parent.info.run_id,
            uri=uri,
        )
    return rows


def plan_matched(
    learned_rows: Sequence[dict[str, Any]],
    matched: Sequence[str],
    full_params: int,
    floor: int,
    dim: int,
    chunks: int,
) -> list[tuple[str, float, EmbeddingConfig, dict[str, Any]]]:
    """(method, fraction, embedding, learned row) for each plain method in `matched` at the
    bytes each learned row reached, as a fraction of the `full_params` float32 parameters;
    none where that fraction holds fewer than `floor` parameters (not a row per feature)."""
    out = []
    for learned in learned_rows:
        fraction = min(learned["bytes"] / (4 * full_params), 1.0)
        if fraction * full_params < floor:
            continue
        for method in matched:
            out.append(
                (method, fraction, embedding_for(method, fraction, dim=dim, chunks=chunks), learned)
            )
    return out


def parse_budget(text: str) -> float:
    """A budget from the command line: `0.25` or `1/4` -> 0.25 (must be in (0, 1])."""
    try:
        num, _, den = text.partition("/")
        value = float(num) / float(den) if den else float(num)
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"budget {text!r} is not a number or a fraction like 1/16") from None
    if not 0.0 < value <= 1.0:
        raise ConfigError(f"budget {text!r} must be in (0, 1]: a fraction of the full table")
    return value


def parse_seeds(text: str) -> Seeds:
    """Seeds from the command line: `3` -> seeds 0, 1, 2; `3,4` or `3-4` -> seeds 3 and 4 (to
    add seeds to a benchmark whose folder is elsewhere, or to split one over machines)."""
    try:
        if "," in text:
            return tuple(int(t) for t in text.split(",") if t.strip())
        first, dash, last = text.partition("-")
        if dash and first:
            return tuple(range(int(first), int(last) + 1))
        return int(text)
    except ValueError:
        raise ConfigError(
            f"--seeds {text!r}: give a count (3: seeds 0-2), a range (3-4) or a list (3,4)"
        ) from None


def seed_list(seeds: Seeds) -> tuple[int, ...]:
    """The seeds `seeds` names, checked: at least one, none negative, none twice."""
    listed = tuple(range(seeds)) if isinstance(seeds, int) else tuple(seeds)
    if not listed or min(listed) < 0 or len(set(listed)) != len(listed):
        raise ConfigError(
            f"--seeds {seeds_label(seeds)}: name at least one seed, each >= 0 and once"
        )
    return listed


def seeds_label(seeds: Seeds) -> str:
    """`seeds` as `--seeds` takes it."""
    return str(seeds) if isinstance(seeds, int) else ",".join(map(str, seeds))


def embedding_for(
    method: str,
    budget: float,
    *,
    dim: int,
    chunks: int,
    base: str | None = None,
    configured: EmbeddingConfig | None = None,
) -> EmbeddingConfig:
    """The `embedding:` section of one benchmark row at `budget` of the full `dim`-wide tables.

    For `unified`, `c` chunks of `dim / c` (c <= `chunks`, dividing `dim`, with `budget * c <= 1`),
    so the feature width stays `dim` and the rows x chunk width equal `budget` of the full tables.
    A learned method on `base` sizes its own row (its options' `LearnedOptions.at_budget`:
    the base's budget and the options the budget sets) and keeps the other options of the job
    config's embedding (`configured`) when that is the same method (e.g. DSL's `delta_t`).
    On full tables the linear part's tables are then cut to `budget` too, as every table of
    the plain rows is (left whole, they alone would be 1/(dim + 1) of the full bytes, half of
    a 1/16 row's): into one shared table (`first_order_budget`), unless the method sizes that
    part itself (`sizes_first_order`: DNIS prunes it or keeps it inside its budget).
    """
    kind = EmbeddingMethod(method)
    if base is not None:
        options_class = learned_options(kind)
        own = {}
        if configured is not None and configured.method is kind:
            sized = {"base", *options_class.SIZED}
            own = {k: v for k, v in to_dict(configured.options).items() if k not in sized}
        start, options = options_class.at_budget(base, budget, own)
        learned = {**to_dict(embedding_for(base, start, dim=dim, chunks=chunks)), "method": method}
        embedding = from_dict(EmbeddingConfig, {**learned, "options": {**own, **options}})
        cut = base == EmbeddingMethod.FULL.value and budget < 1.0
        if cut and not embedding.options.sizes_first_order:
            embedding = dataclasses.replace(embedding, first_order_budget=budget)
        return embedding
    if kind is EmbeddingMethod.FULL:
        return EmbeddingConfig(method=kind, dim=dim)
    if kind is not EmbeddingMethod.UNIFIED:
        return EmbeddingConfig(method=kind, dim=dim, budget=budget)
    fitting = [c for c in range(chunks, 0, -1) if dim % c == 0 and budget * c <= 1.0 + 1e-12]
    c = fitting[0]
    return EmbeddingConfig(method=kind, dim=dim // c, budget=min(1.0, budget * c), chunks=c)


def _threads(job: JobConfig) -> int:
    return job.train.threads_per_worker or max(1, (os.cpu_count() or 1) // job.train.workers)


def summarise(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and spread over seeds per (method, budget), with throughput relative to `full`.
    A row trained at the bytes a learned row reached groups with the other seeds' rows matched
    to the same learned (method, budget): each seed's learned row reached slightly other bytes,
    so their own budgets differ (the group's budget is their mean)."""
    groups: dict[tuple[str, str, str, float], list[dict[str, Any]]] = {}
    for row in rows:
        matched = row.get("matched_to", "")
        budget = row.get("matched_budget", row["budget"]) if matched else row["budget"]
        groups.setdefault((row["method"], row.get("base", ""), matched, budget), []).append(row)
    # Back-to-back figures where measured: runs minutes apart compare the machine's load too.
    speed_key = (
        "b2b_examples_per_s" if all("b2b_examples_per_s" in r for r in rows) else "examples_per_s"
    )
    full = groups.get((EmbeddingMethod.FULL.value, "", "", 1.0))
    full_speed = statistics.mean(r[speed_key] for r in full) if full else None
    full_auc = statistics.mean(r["test_auc"] for r in full) if full else None
    summary = []
    for (method, base, matched, _), group in groups.items():
        aucs = [r["test_auc"] for r in group]
        budget = statistics.mean(r["budget"] for r in group)
        speed = statistics.mean(r[speed_key] for r in group)
        summary.append({
            "method": method,
            "base": base,
            "matched_to": matched,
            "budget": budget,
            "budget_label": budget_label(budget),
            "chunks": group[0]["chunks"],
            "seeds": len(group),
            "params": round(statistics.mean(r["params"] for r in group)),
            "bytes": round(statistics.mean(r["bytes"] for r in group)),
            "param_fraction": statistics.mean(r["param_fraction"] for r in group),
            "bytes_fraction": statistics.mean(
                r.get("bytes_fraction", r["param_fraction"]) for r in group
            ),
            "test_auc": statistics.mean(aucs),
            "auc_std": statistics.stdev(aucs) if len(aucs) > 1 else 0.0,
            "auc_vs_full": statistics.mean(aucs) - full_auc if full_auc is not None else None,
            "test_logloss": statistics.mean(r["test_logloss"] for r in group),
            "examples_per_s": statistics.mean(r["examples_per_s"] for r in group),
            "b2b_examples_per_s": group[0].get("b2b_examples_per_s"),
            "speed_vs_full": speed / full_speed if full_speed else None,
        })  # fmt: skip
    order = {m: i for i, m in enumerate(METHODS)}
    return sorted(summary, key=lambda s: (order.get(s["method"], 99), s["base"], -s["budget"]))


def targets(summary: Sequence[dict[str, Any]], *, budget: float = 1 / 16) -> dict[str, Any]:
    """The issue's targets at `budget`: unified vs full AUC, unified vs hashing AUC, and
    unified throughput vs full (mean over its budgets); None where a row is missing."""
    pick = {(s["method"], s["budget"]): s for s in summary}
    full, uni = pick.get(("full", 1.0)), pick.get(("unified", budget))
    hashing = pick.get(("hashing", budget))
    unified_speeds = [s["speed_vs_full"] for s in summary if s["method"] == "unified"]
    return {
        "unified_minus_full_auc": uni["test_auc"] - full["test_auc"] if uni and full else None,
        "unified_minus_hashing_auc": uni["test_auc"] - hashing["test_auc"]
        if uni and hashing
        else None,
        "unified_speed_vs_full": (
            statistics.mean(unified_speeds) if unified_speeds and full else None
        ),
    }


def budget_label(budget: float) -> str:
    """0.0625 -> '1/16', 1.0 -> '1', 0.3 -> '0.3'."""
    if budget == 1.0:
        return "1"
    inverse = 1.0 / budget
    return f"1/{round(inverse)}" if abs(inverse - round(inverse)) < 1e-9 else f"{budget:g}"


def results_markdown(
    name: str, rows: Sequence[dict[str, Any]], summary: Sequence[dict[str, Any]], *, command: str
) -> str:
    """The `results.md` text: summary over seeds, the targets, then every row."""
    shown = [
        {**s, "test_auc": f"{s['test_auc']:.4f} ± {s['auc_std']:.4f}",
         "auc_vs_full": "" if s["auc_vs_full"] is None else f"{s['auc_vs_full']:+.4f}",
         "speed_vs_full": "" if s["speed_vs_full"] is None else f"{s['speed_vs_full']:.2f}",
         "params": f"{s['params']:,}", "bytes": f"{s['bytes']:,}",
         "bytes_fraction": f"{s['bytes_fraction']:.4f}"}
        for s in summary
    ]  # fmt: skip
    learned = learned_comparison(summary)
    goal = targets(summary)
    fmt = lambda v, spec: "n/a" if v is None else format(v, spec)  # noqa: E731
    lines = [
        f"## {name}\n",
        f"`{command}`\n",
        markdown_table(
            shown,
            [
                "method",
                "base",
                "budget_label",
                "chunks",
                "params",
                "bytes",
                "bytes_fraction",
                "seeds",
                "test_auc",
                "auc_vs_full",
                "test_logloss",
                "examples_per_s",
                "b2b_examples_per_s",
                "speed_vs_full",
            ],
        ),
        "",
        "`examples_per_s`: median epoch of each training job; `b2b_examples_per_s`: the same "
        "model trained on the same batches back to back with every other row, in one process "
        "(best of 4 passes); `speed_vs_full` is the latter's ratio to `full` where measured.\n",
        *(
            [
                "At 1/16 of the full table (mean over seeds): unified - full test AUC = "
                f"{fmt(goal['unified_minus_full_auc'], '+.4f')} (target >= -0.002 on the "
                "synthetic set); unified - hashing = "
                f"{fmt(goal['unified_minus_hashing_auc'], '+.4f')} (target > 0); unified "
                f"examples/s / full = {fmt(goal['unified_speed_vs_full'], '.2f')} (target >= 0.8).\n"
            ]
            if any(v is not None for v in goal.values())
            else []  # no plain unified rows (e.g. a learned method alone): no such targets
        ),
        *(
            [
                "### Learned methods against the plain ones at the same bytes\n",
                markdown_table(learned, list(learned[0])),
                "",
            ]
            if learned
            else []
        ),
        "### Every run\n",
        markdown_table(rows, [*ROW_KEYS, "chunks", "epochs", "matched_to"]),
    ]
    return "\n".join(lines)


def learned_comparison(summary: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per learned (method, base, budget): its bytes and AUC against the full tables
    and against hashing and Unified Embedding trained at the bytes it reached."""
    full = next((s for s in summary if s["method"] == EmbeddingMethod.FULL.value), None)
    lines = []
    for s in summary:
        if not s["base"]:
            continue
        label = f"{s['method']}:{s['base']}"
        line = {
            "method": label,
            "search budget": s["budget_label"],
            "bytes": f"{s['bytes']:,}",
            "bytes / full": f"{s['bytes_fraction']:.4f}",
            "test AUC": f"{s['test_auc']:.4f} ± {s['auc_std']:.4f}",
            "- full": "" if full is None else f"{s['test_auc'] - full['test_auc']:+.4f}",
        }
        for method in MATCHED:
            match = [m for m in summary if m["method"] == method and m["matched_to"] == label]
            near = min(match, key=lambda m: abs(m["bytes"] - s["bytes"]), default=None)
            line[f"- {method} at its bytes"] = (
                "" if near is None else f"{s['test_auc'] - near['test_auc']:+.4f}"
            )
        lines.append(line)
    return lines


def pareto_figure(summary: Sequence[dict[str, Any]], *, title: str) -> Any:
    """Test AUC (mean, error bar = std over seeds) against embedding bytes: one line per plain
    method, learned methods as points (one marker per base)."""
    plt = plots._pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    labelled = False  # budgets share x positions across methods: label one line only
    for method, base in sorted({(s["method"], s["base"]) for s in summary if s["base"]}):
        points = [s for s in summary if (s["method"], s["base"]) == (method, base)]
        ax.errorbar([p["bytes"] for p in points], [p["test_auc"] for p in points],
                    yerr=[p["auc_std"] for p in points], marker="D" if base == "full" else "P",
                    markersize=8, linestyle="none", capsize=3, label=f"{method} on {base}")  # fmt: skip
    for method in METHODS:
        plain = [s for s in summary if s["method"] == method and not s["base"]]
        points = sorted(plain, key=lambda s: s["bytes"])
        if not points:
            continue
        xs, ys = [p["bytes"] for p in points], [p["test_auc"] for p in points]
        errs = [p["auc_std"] for p in points]
        if method == EmbeddingMethod.FULL.value:
            ax.axhline(ys[0], color="black", linestyle=":", linewidth=1)
            ax.errorbar(
                xs, ys, yerr=errs, marker="*", markersize=12, color="black", label=method, capsize=3
            )
            continue
        ax.errorbar(xs, ys, yerr=errs, marker="o", label=method, capsize=3)
        for p in points if not labelled else ():
            ax.annotate(p["budget_label"], (p["bytes"], p["test_auc"]), textcoords="offset points",
                        xytext=(4, -10), fontsize=7)  # fmt: skip
        labelled = True
    ax.set_xscale("log")
    ax.set_xlabel("embedding bytes, serving form (log scale)")
    ax.set_ylabel("test AUC")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    return fig


def _base_job(
    fmt: str,
    data: Path,
    out: Path,
    config: str | Path | None,
    overrides: Sequence[str],
    tracking_uri: str | None,
    name: str | None,
) -> JobConfig:
    try:
        kind = DataFormat(fmt)
    except ValueError:
        raise ConfigError(f"--format {fmt!r}: use criteo, avazu, movielens or parquet") from None
    if not data.exists():
        raise ConfigError(f"--data {data}: no such file or folder")
    if kind is DataFormat.PARQUET and config is None:
        raise ConfigError(
            "--format parquet: give --config with the data.schema of the file "
            "(e.g. --config movielens_1m)"
        )
    source: str | Path = config or kind.value
    job = load_job_config(config_path(source), overrides)
    tuned = None if config else tuned_config(kind.value, job.model.backbone.value)
    if tuned is not None:  # every method compared under the recipe tuned for the full tables
        note = f"(--config {source}: the untuned recipe)"
        print(f"[bench embeddings] hyper-parameters: {tuned.name} {note}")
        source, job = tuned, load_job_config(tuned, overrides)
    if kind is DataFormat.PARQUET and job.data.schema is None:
        raise ConfigError(f"--config {source}: has no data.schema for the Parquet input")
    label = name or (kind.value if data.is_dir() else data.stem)
    # Not MLFLOW_TRACKING_URI: MLflow sets it itself once a run starts, so a second benchmark in
    # the same process would log into the first one's store. The CLI passes the user's value.
    uri = tracking_uri or job.tracking.uri or f"sqlite:///{out / 'mlflow.db'}"
    return dataclasses.replace(
        job,
        name=f"bench-embeddings-{label}",
        data=_data_section(kind, data, job.data),
        tracking=TrackingConfig(uri=uri, experiment="bench-embeddings"),
        output=str(out / "runs"),
    )


def _data_section(kind: DataFormat, data: Path, template: DataConfig) -> DataConfig:
    """The dataset config's encoding options with `data`'s paths: given splits or a seeded split."""
    base = dict(min_count=template.min_count, numeric=template.numeric,
                hash_buckets=template.hash_buckets, max_reject_ratio=template.max_reject_ratio,
                schema=template.schema if kind is DataFormat.PARQUET else None)  # fmt: skip
    if kind is DataFormat.MOVIELENS or not data.is_dir():
        split = (
            template.split
            if kind is DataFormat.MOVIELENS
            else SplitConfig(valid=0.1, test=0.1, seed=0)
        )
        return DataConfig(format=kind, path=str(data.resolve()), split=split, **base)
    files = sorted(p for p in data.iterdir() if p.is_file() and not p.name.startswith("."))

    def find(stems: Sequence[str]) -> Path:
        for p in files:
            if p.stem.lower() in stems:
                return p.resolve()
        raise ConfigError(
            f"--data {data}: no {'/'.join(stems)} file in the folder; give a folder with "
            "train, dev (or valid) and test files, or a single file to split"
        )

    return DataConfig(format=kind, path=str(find(("train",))), valid_path=str(find(_SPLIT_NAMES["valid"])),
                      test_path=str(find(_SPLIT_NAMES["test"])), **base)  # fmt: skip


def plan_rows(
    methods: Sequence[str],
    budgets: Sequence[float],
    seeds: Seeds,
    chunks: int,
    dim: int,
    configured: EmbeddingConfig | None = None,
) -> list[tuple[str, float, EmbeddingConfig, int]]:
    """(method label, budget, embedding, seed) in run order: per seed, full first, then by method
    and budget. A learned method's label is `method:base` (`optembed` alone: each of its bases);
    a token `method@b` (e.g. `optembed:unified@1/16`) runs at budget b only, not at `budgets`.

    When the job config's embedding (`configured`) is a learned method, that method's rows keep
    its `embedding.options` (e.g. DSL's `delta_t`) except the keys the benchmark sizes (`base`
    and the budget's own: the options class's `SIZED`)."""
    labels: dict[str, tuple[float, ...] | None] = {}
    for token in methods:
        name, _, only = token.partition("@")
        method, _, base = name.partition(":")
        if method not in METHODS or (base and base not in LEARNED.get(method, ())):
            choices = [*METHODS, *(f"{m}:{b}" for m, bases in LEARNED.items() for b in bases)]
            raise ConfigError(f"--methods {list(methods)}: choose from {', '.join(choices)}")
        for b in (base,) if base else LEARNED.get(method, ("",)):
            label = f"{method}:{b}" if b else method
            if only:
                labels[label] = (*(labels.get(label) or ()), parse_budget(only))
            else:
                labels.setdefault(label, None)
    if not labels:
        raise ConfigError("--methods: name at least one method")
    listed = seed_list(seeds)
    if chunks < 1:
        raise ConfigError(f"--chunks {chunks} must be >= 1")
    for b in budgets:
        if not 0.0 < b <= 1.0:
            raise ConfigError(f"--budgets: {b} is not in (0, 1]")
    configs = []
    for label in sorted(labels, key=lambda x: (METHODS.index(x.split(":")[0]), x)):
        method, _, base = label.partition(":")
        own = labels[label]
        at = (
            (1.0,)
            if method == EmbeddingMethod.FULL.value
            else sorted(set(own or budgets), reverse=True)
        )
        for b in at:
            embedding = embedding_for(
                method, b, dim=dim, chunks=chunks, base=base or None, configured=configured
            )
            configs.append((label, float(b), embedding))
    # Seed-major: an interrupted benchmark still has every (method, budget) for its first seeds.
    return [
        (label, budget, embedding, seed) for seed in listed for label, budget, embedding in configs
    ]


def bench_embedding_throughput(
    fmt: str,
    data: Path,
    out: Path,
    *,
    methods: Sequence[str] = METHODS,
    budgets: Sequence[float] = BUDGETS,
    chunks: int = 2,
    config: str | Path | None = None,
    overrides: Sequence[str] = (),
    batches: int = 40,
) -> list[dict[str, Any]]:
    """Only the back-to-back training throughput of every (method, budget), no test runs: one
    ingest, then each model trains `batches` batches in turn (`bench.throughput`). Writes
    `out/throughput.json` and `out/throughput.md` (examples/s and the ratio to `full`)."""
    out = Path(out).resolve()
    base = _base_job(fmt, Path(data), out, config, overrides, None, None)
    plan = plan_rows(methods, budgets, 1, chunks, base.embedding.dim, base.embedding)
    rows = [
        {"method": m.partition(":")[0], "base": m.partition(":")[2], "budget": b,
         "chunks": e.chunks, "dim": e.dim}
        for m, b, e, _ in plan
    ]  # fmt: skip
    configs = {_key(r): e for r, (_, _, e, _) in zip(rows, plan, strict=True)}
    _add_back_to_back_throughput(rows, base, configs, run_ingest(base, progress=False), batches)
    full = next((r["b2b_examples_per_s"] for r in rows if r["method"] == "full"), None)
    for row in rows:
        row["budget_label"] = budget_label(row["budget"])
        row["speed_vs_full"] = row["b2b_examples_per_s"] / full if full else None
    columns = [
        "method",
        "base",
        "budget_label",
        "chunks",
        "dim",
        "b2b_examples_per_s",
        "speed_vs_full",
    ]
    table = markdown_table(rows, columns)
    out.mkdir(parents=True, exist_ok=True)
    (out / "throughput.md").write_text(table)
    (out / "throughput.json").write_text(json.dumps(rows, indent=1))
    print(table)
    return rows


@restores_cpu_state()
def _add_back_to_back_throughput(
    rows: list[dict[str, Any]],
    base: JobConfig,
    configs: dict[str, EmbeddingConfig],
    ingested: Any,
    batches: int,
) -> None:
    """Give every row the `b2b_examples_per_s` of its model (`configs`, keyed by `_key`),
    measured interleaved with the others on the same batches."""
    use_cpu_threads(
        base.train.threads_per_worker or max(1, (os.cpu_count() or 1) // base.train.workers)
    )
    data = load_batches(
        ingested.shards("train"), ingested.spec, batch_size=base.train.batch_size, limit=batches
    )
    print(
        f"[bench embeddings] back-to-back throughput: {len(configs)} models x {len(data)} batches"
    )
    speeds = embedding_throughput(base.model, configs, ingested.spec, data, lr=base.train.lr)
    for row in rows:
        row["b2b_examples_per_s"] = speeds[_key(row)]


def _key(row: dict[str, Any]) -> str:
    """`method[:base]@budget`: one trained model configuration of the benchmark."""
    label = f"{row['method']}:{row['base']}" if row.get("base") else row["method"]
    return f"{label}@{budget_label(row['budget'])}"


def _embedding_parameters(job: JobConfig, data: Any) -> int:
    return build_ctr_model(job.model, job.embedding, data.spec).embedding_parameters()


def _row(
    dataset: str,
    label: str,
    budget: float,
    embedding: EmbeddingConfig,
    seed: int,
    full_params: int,
    result: Any,
    job: JobConfig,
    data: Any,
) -> dict[str, Any]:
    metrics, history = result.metrics, result.history
    speeds = sorted(h["examples_per_s"] for h in history) or [metrics["train_examples_per_s"]]
    method, _, base = label.partition(":")
    if "embedding_bytes" in metrics:  # the trained model's serving form (compact if learned)
        params, size = int(metrics["embedding_params"]), int(metrics["embedding_bytes"])
    else:  # a run finished before these were recorded: a plain method, float32 tables
        params = _embedding_parameters(job, data)
        size = 4 * params
    return {
        "method": method,
        "budget": budget,
        "params": params,
        "bytes": size,
        "test_auc": metrics["test_auc"],
        "test_logloss": metrics["test_logloss"],
        "examples_per_s": statistics.median(speeds),  # median epoch: robust to a busy machine
        "seed": seed,
        "base": base,
        "dataset": dataset,
        "chunks": embedding.chunks,
        "dim": embedding.dim,
        "param_fraction": params / full_params,
        "bytes_fraction": size / (4 * full_params),
        "valid_auc": metrics["best_valid_auc"],
        "epochs": int(metrics["epochs_run"]),
        "run_id": metrics.get("run_id", result.run_id),
    }


def _progress(row: dict[str, Any]) -> str:
    return (
        f"[bench embeddings] {row['method'] + (':' + row['base'] if row['base'] else ''):16s} budget {budget_label(row['budget']):>5s} seed {row['seed']}: "
        f"AUC {row['test_auc']:.4f}  logloss {row['test_logloss']:.4f}  params {row['params']:,}  "
        f"{row['examples_per_s']:,.0f} ex/s"
    )


def _bench_params(job: JobConfig, plan: Sequence[tuple[Any, ...]], seeds: Seeds) -> dict[str, Any]:
    from plexus.platform import config as config_io

    params = {k: v for k, v in config_io.flatten(job).items() if not k.startswith("embedding.")}
    params.update({"bench.rows": len(plan), "bench.seeds": seeds_label(seeds),
                   "bench.methods": ",".join(dict.fromkeys(p[0] for p in plan)),
                   "bench.budgets": ",".join(budget_label(b) for b in dict.fromkeys(p[1] for p in plan))})  # fmt: skip
    return params


def _headline_metrics(summary: Sequence[dict[str, Any]]) -> dict[str, float]:
    metrics = {
        f"{s['method']}{'_' + s['base'] if s['base'] else ''}_"
        f"{s['budget_label'].replace('/', 'of')}_test_auc": s["test_auc"]
        for s in summary
    }
    metrics.update({k: float(v) for k, v in targets(summary).items() if v is not None})
    return metrics


def _command(
    fmt: str,
    data: Path,
    out: Path,
    method_tokens: Sequence[str],
    budget_list: Sequence[float],
    seeds: Seeds,
    chunks: int,
    config: str | Path | None,
    overrides: Sequence[str],
    matched: Sequence[str] = MATCHED,
) -> str:
    """The command line that reproduces this benchmark."""
    methods = ",".join(dict.fromkeys(method_tokens))
    budgets = ",".join(budget_label(b) for b in sorted(set(budget_list), reverse=True))
    parts = [f"plexus bench embeddings --format {fmt} --data {data} --out {out}",
             f"--methods {methods} --budgets {budgets} --seeds {seeds_label(seeds)}"]  # fmt: skip
    if chunks != 2:
        parts.append(f"--chunks {chunks}")
    if tuple(matched) != MATCHED:
        parts.append(f"--match '{','.join(matched)}'")
    if config is not None:
        parts.append(f"--config {config}")
    parts += [f"--set {o}" for o in overrides]
    return " ".join(parts)


__all__ = [
    "BUDGETS",
    "METHODS",
    "ROW_KEYS",
    "bench_embedding_throughput",
    "bench_embeddings",
    "embedding_for",
    "parse_budget",
    "summarise",
]
