"""`plexus bench quality`: every backbone beside non-neural baselines, per dataset and split.

Each (dataset, backbone, seed) trains through the real job (ingest is shared per dataset) with the
tuned config of that backbone when one is bundled (`configs/tuned/<config>-<backbone>.yaml`,
written by `plexus tune`), else the dataset's bundled config with `model.backbone` overridden.
Beside them, on the same ingested shards (same split, same features, same encoding), the
baselines of `bench.baselines`: a one-hot scikit-learn logistic regression with `C` chosen on
validation, and for MovieLens the item-popularity and user-mean predictors.

`folds=K` repeats all of it on K cross-validation folds of the rows that are not test
(`data.split.folds`, as `plexus tune` validates), each model tested on the same test rows: on
the small Criteo and Avazu samples one validation split's luck moves a backbone's test AUC as
much as the backbones differ, and K folds average it out.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import statistics
from collections.abc import Sequence
from pathlib import Path

from plexus.pipelines.bench import baselines
from plexus.pipelines.bench.report import markdown_table, write_results
from plexus.pipelines.config import bundled_config, load_job_config, tuned_config
from plexus.pipelines.jobs import run_ingest
from plexus.pipelines.train.job import train
from plexus.platform.errors import ConfigError

BASELINES = ("sklearn_lr", "item_popularity", "user_mean")


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A benchmark dataset: a bundled config, overrides (the split), default seeds, and the name
    its tuned configs go by (`configs/tuned/<tuned>-<backbone>.yaml`; default: `config`'s, so
    another split of the same data can have recipes chosen on its own validation rows)."""

    config: str
    overrides: tuple[str, ...] = ()
    seeds: int = 1
    title: str = ""
    tuned: str = ""

    @property
    def tuned_name(self) -> str:
        return self.tuned or self.config


DATASETS = {
    "movielens": Dataset("movielens", title="MovieLens-100K, time split"),
    "movielens_random": Dataset(
        "movielens",
        ("data.split.by=random",),
        title="MovieLens-100K, random split",
        tuned="movielens_random",
    ),
    "movielens_1m": Dataset("movielens_1m", title="MovieLens-1M CTR, random split"),
    "criteo": Dataset("criteo", seeds=3, title="Criteo sample (7,200 train rows)"),
    "avazu": Dataset("avazu", seeds=3, title="Avazu sample (8,087 train rows)"),
}


def bench_quality(
    out: Path,
    *,
    data_root: Path,
    backbones: Sequence[str] = ("lr", "fm", "deepfm", "dcnv2"),
    datasets: Sequence[str] = ("movielens", "movielens_random", "movielens_1m", "criteo", "avazu"),
    seeds: int | None = None,
    with_baselines: bool = True,
    folds: int = 0,
) -> list[dict[str, object]]:
    """Train every backbone on every dataset beside the baselines; write results.json /
    results.md; return the rows (one per run, baselines with `seed` -1). With `folds` >= 2,
    on each fold (rows gain `fold`; `seeds` defaults to 1 a fold)."""
    if folds == 1 or folds < 0:
        raise ConfigError(f"--folds: 0 (the dataset's own split) or at least 2, got {folds}")
    unknown = [d for d in datasets if d not in DATASETS]
    if unknown:
        raise ConfigError(f"--datasets: unknown {unknown[0]!r}; one of {', '.join(DATASETS)}")
    out = out.resolve()
    os.environ["PLEXUS_DATA"] = str(data_root.resolve())
    common = [
        f"output={out / 'runs'}",
        f"tracking.uri=sqlite:///{out / 'mlflow.db'}",
        "tracking.experiment=bench-quality",
    ]
    rows: list[dict[str, object]] = []
    for name, fold in itertools.product(datasets, range(folds) if folds else [None]):
        dataset = DATASETS[name]
        split = [*dataset.overrides]
        if fold is not None:
            split += [f"data.split.folds={folds}", f"data.split.fold={fold}"]
        where = {"dataset": name, **({} if fold is None else {"fold": fold})}
        base = load_job_config(bundled_config(dataset.config), [*split, *common])
        data = run_ingest(base, progress=False)
        if with_baselines:
            rows += _baseline_rows(where, data, base.embedding.pooling)
        for backbone in backbones:
            tuned = tuned_config(dataset.tuned_name, backbone)
            for seed in range(seeds or (1 if folds else dataset.seeds)):
                job = load_job_config(
                    tuned or bundled_config(dataset.config),
                    [*split, f"model.backbone={backbone}", f"train.seed={seed}", *common],
                )
                result = train(job, run_ingest(job, progress=False))
                rows.append(
                    {
                        **where,
                        "model": backbone,
                        "tuned": tuned is not None,
                        "seed": seed,
                        "valid_auc": result.metrics["best_valid_auc"],
                        "test_auc": result.metrics["test_auc"],
                        "test_logloss": result.metrics["test_logloss"],
                        "epochs": result.metrics["epochs_run"],
                    }
                )
                _print_row(rows[-1])
    summary = summarise(rows)
    columns = ["dataset", "model", "seeds", "test_auc", "auc_std", "test_logloss", "valid_auc"]
    markdown = markdown_table(summary, columns) + "\n" + wide_table(summary)
    write_results(out, rows, markdown=markdown)
    print(markdown)
    return rows


def _baseline_rows(where: dict[str, object], data: object, pooling: str) -> list[dict[str, object]]:
    fitted = {"sklearn_lr": baselines.fit_sklearn_lr(data, pooling=pooling)}  # type: ignore[arg-type]
    fitted.update(baselines.predictor_baselines(data))  # type: ignore[arg-type]
    rows: list[dict[str, object]] = []
    for model, metrics in fitted.items():
        rows.append({**where, "model": model, "seed": -1, **metrics})
        _print_row(rows[-1])
    return rows


def _print_row(row: dict[str, object]) -> None:
    fold = f" fold {row['fold']}" if "fold" in row else ""
    print(
        f"[bench quality] {row['dataset']:16s} {row['model']:15s} seed {row['seed']}{fold}: "
        f"valid AUC {float(row['valid_auc']):.4f}  test AUC {float(row['test_auc']):.4f}  "  # type: ignore[arg-type]
        f"logloss {float(row['test_logloss']):.4f}",  # type: ignore[arg-type]
        flush=True,
    )


def summarise(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    """Mean (and spread over seeds and folds) of every (dataset, model); `seeds` counts the
    runs."""
    groups: dict[tuple[object, object], list[dict[str, object]]] = {}
    for row in rows:
        groups.setdefault((row["dataset"], row["model"]), []).append(row)
    summary = []
    for (dataset, model), group in groups.items():
        aucs = [float(r["test_auc"]) for r in group]  # type: ignore[arg-type]
        summary.append(
            {
                "dataset": dataset,
                "model": model,
                "seeds": len(group),
                "test_auc": statistics.mean(aucs),
                "auc_std": statistics.stdev(aucs) if len(aucs) > 1 else 0.0,
                "test_logloss": statistics.mean(float(r["test_logloss"]) for r in group),  # type: ignore[arg-type]
                "valid_auc": statistics.mean(float(r["valid_auc"]) for r in group),  # type: ignore[arg-type]
            }
        )
    return summary


def wide_table(summary: list[dict[str, object]]) -> str:
    """Test AUC, one row per dataset, the baselines then every backbone (± std over seeds)."""
    models = list(dict.fromkeys(str(r["model"]) for r in summary))
    models = [m for m in BASELINES if m in models] + [m for m in models if m not in BASELINES]
    table: dict[object, dict[str, str]] = {}
    for row in summary:
        cell = f"{float(row['test_auc']):.4f}"  # type: ignore[arg-type]
        if int(row["seeds"]) > 1:  # type: ignore[call-overload]
            cell += f" ± {float(row['auc_std']):.4f}"  # type: ignore[arg-type]
        table.setdefault(row["dataset"], {})[str(row["model"])] = cell
    lines = [
        "| dataset (test AUC) | " + " | ".join(models) + " |",
        "|" + "---|" * (len(models) + 1),
    ]
    for dataset, cells in table.items():
        title = DATASETS[str(dataset)].title if str(dataset) in DATASETS else str(dataset)
        lines.append(f"| {title} | " + " | ".join(cells.get(m, "") for m in models) + " |")
    return "\n".join(lines) + "\n"
