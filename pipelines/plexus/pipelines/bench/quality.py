"""`plexus bench quality`: test AUC and logloss of every backbone on the real data samples.

Each (dataset, backbone, seed) trains through the real job (ingest is shared per dataset) with
the bundled config of the dataset and `model.backbone` / `train.seed` overridden.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Sequence
from pathlib import Path

from plexus.pipelines.bench.report import markdown_table, write_results
from plexus.pipelines.config import bundled_config, load_job_config
from plexus.pipelines.jobs import run_ingest
from plexus.pipelines.train.job import train


def bench_quality(
    out: Path,
    *,
    data_root: Path,
    backbones: Sequence[str] = ("lr", "fm", "deepfm", "dcnv2"),
    datasets: Sequence[str] = ("movielens", "criteo", "avazu"),
    seeds: int = 1,
) -> list[dict[str, object]]:
    """Train every backbone on every dataset; write results.json / results.md; return the rows."""
    out = out.resolve()
    os.environ["PLEXUS_DATA"] = str(data_root.resolve())
    tracking = f"tracking.uri=sqlite:///{out / 'mlflow.db'}"
    rows: list[dict[str, object]] = []
    for dataset in datasets:
        for backbone in backbones:
            for seed in range(seeds):
                job = load_job_config(
                    bundled_config(dataset),
                    [
                        f"model.backbone={backbone}",
                        f"train.seed={seed}",
                        f"output={out / 'runs'}",
                        tracking,
                        "tracking.experiment=bench-quality",
                    ],
                )
                result = train(job, run_ingest(job, progress=False))
                rows.append(
                    {
                        "dataset": dataset,
                        "backbone": backbone,
                        "seed": seed,
                        "test_auc": result.metrics["test_auc"],
                        "test_logloss": result.metrics["test_logloss"],
                        "epochs": result.metrics["epochs_run"],
                    }
                )
                print(
                    f"[bench quality] {dataset:10s} {backbone:7s} seed {seed}: "
                    f"AUC {rows[-1]['test_auc']:.4f}  logloss {rows[-1]['test_logloss']:.4f}",
                    flush=True,
                )
    summary = _summarise(rows)
    write_results(
        out,
        rows,
        markdown=markdown_table(
            summary, ["dataset", "backbone", "seeds", "test_auc", "auc_std", "test_logloss"]
        ),
    )
    print(
        markdown_table(
            summary, ["dataset", "backbone", "seeds", "test_auc", "auc_std", "test_logloss"]
        )
    )
    return rows


def _summarise(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    groups: dict[tuple[object, object], list[dict[str, object]]] = {}
    for row in rows:
        groups.setdefault((row["dataset"], row["backbone"]), []).append(row)
    summary = []
    for (dataset, backbone), group in groups.items():
        aucs = [float(r["test_auc"]) for r in group]  # type: ignore[arg-type]
        summary.append(
            {
                "dataset": dataset,
                "backbone": backbone,
                "seeds": len(group),
                "test_auc": statistics.mean(aucs),
                "auc_std": statistics.stdev(aucs) if len(aucs) > 1 else 0.0,
                "test_logloss": statistics.mean(float(r["test_logloss"]) for r in group),  # type: ignore[arg-type]
            }
        )
    return summary
