"""`plexus bench retrieval`: kNN-Embed against single-vector retrieval on one dataset."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from plexus.models.threads import restores_cpu_state, use_cpu_threads
from plexus.pipelines.bench.report import markdown_table as generic_table
from plexus.pipelines.retrieval.compare import compare_retrieval, fit_knn_embed_query
from plexus.pipelines.retrieval.config import bundled_retrieval_config, load_retrieval_config
from plexus.pipelines.retrieval.evaluate import evaluate_tower
from plexus.pipelines.retrieval.report import flat_metrics, markdown_table, write_report
from plexus.pipelines.retrieval.tune import MIN_DIVERSITY, tune_knn_embed
from plexus.pipelines.retrieval.user_state import build_user_state
from plexus.platform import config as config_io


@restores_cpu_state()
def bench_retrieval(
    fmt: str,
    data: str | Path,
    out: str | Path,
    ks: Sequence[int] = (20, 50, 100, 200),
    *,
    overrides: Sequence[str] = (),
    tune_power: Sequence[float] = (),
    tune_smoothing: Sequence[float] = (),
    tune_prior: Sequence[float] = (),
    min_diversity: float | None = None,
) -> list[dict[str, Any]]:
    """Train (Ray Train; reused if `out` already holds the same model), fit kNN-Embed, compare
    with single-vector retrieval at each K, write DIR/results.json, results.md, retrieval.png
    and log them to MLflow. `fmt`: movielens or lightgcn; `overrides`: `section.key=value`.

    `tune_power`, `tune_smoothing`: candidate allocation powers and neighbour smoothing weights,
    chosen together on a validation split with a second model trained without the validation
    items (`tune.tune_knn_embed`: the best recall among settings with at least `min_diversity`
    times single-vector retrieval's distinct clusters, default `tune.MIN_DIVERSITY`); both
    empty: the config's, untuned. `tune_prior`: candidate popularity-prior weights
    (`export.popularity_prior`), chosen first on the same split by single-vector recall at the
    smallest K.
    """
    from plexus.pipelines import tracking
    from plexus.pipelines.retrieval.job import train_model

    min_diversity = MIN_DIVERSITY if min_diversity is None else min_diversity

    out = Path(out)
    config = load_retrieval_config(
        bundled_retrieval_config(fmt),
        [f"data.path={data}", f"output={out}", f"eval.ks={list(ks)}", *overrides],
    )
    tracking.configure(config.tracking.uri)
    import mlflow
    from plexus.serving.index import set_threads

    use_cpu_threads(config.train.threads)
    set_threads(config.train.threads)
    from plexus.pipelines.retrieval.job import load_data, run_dir

    with tracking.run(
        config.tracking.experiment,
        f"{config.name}-bench-retrieval",
        params=config_io.flatten(config),
    ):
        interactions = load_data(config, log=True)
        knn_config, export, tuning = config.knn_embed, config.export, []
        if tune_power or tune_smoothing or tune_prior:
            knn_config, export, tuning = tune_knn_embed(
                config,
                interactions,
                run_dir(config) / "validation",
                powers=tune_power,
                smoothings=tune_smoothing,
                priors=tune_prior,
                min_diversity=min_diversity,
            )
            mlflow.log_params(
                {
                    "tuned.allocation.power": export.allocation.power,
                    "tuned.knn_embed.smoothing": knn_config.smoothing,
                    "tuned.export.popularity_prior": export.popularity_prior,
                }
            )
        model, _ = train_model(config, interactions, run_dir(config))
        tower = evaluate_tower(model, interactions, ks=config.eval.ks)
        tracking.log_metrics("tower", tower)
        module, state = fit_knn_embed_query(model, interactions, knn_config)
        users = build_user_state(module, state, interactions, config.export.stored_user_state)
        rows = compare_retrieval(
            module,
            state,
            interactions,
            ks=config.eval.ks,
            allocation=export.allocation,
            users=users,
            popularity_prior=export.popularity_prior,
        )
        title = f"{config.name}: kNN-Embed vs single-vector retrieval"
        write_report(rows, out, title=title)
        tower_md = "\n".join(f"- {k}: {v:.4f}" for k, v in sorted(tower.items()))
        with open(out / "results.md", "a") as fh:
            fh.write(f"\nTwo-tower full ranking (exact, train items excluded):\n{tower_md}\n")
            fh.write(
                f"\nkNN-Embed smoothing {knn_config.smoothing:g}, "
                f"allocation power {export.allocation.power:g}, "
                f"popularity prior {export.popularity_prior:g}"
            )
            if tuning:
                fh.write(
                    ", chosen on the validation split (the prior by single-vector recall at the "
                    "smallest K, then the highest mean recall over K among the settings with "
                    f">= {min_diversity:g}x single-vector's distinct clusters):\n\n"
                )
                fh.write(generic_table(tuning, list(tuning[0])))
            fh.write("\n")
        mlflow.log_metrics(flat_metrics(rows))
        for name in ("results.json", "results.md", "retrieval.png"):
            mlflow.log_artifact(str(out / name), artifact_path="report")
        print(markdown_table(rows))
    return rows
