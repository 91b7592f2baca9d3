"""The `plexus` command line: data, ingest, train, evaluate, run, export, promote, serve, bench.

Every job verb takes a config (a YAML path or the name of a bundled one, e.g. `criteo`) followed
by `key=value` overrides, e.g. `plexus run criteo data.path=day_0.tsv train.epochs=3`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from plexus.platform.errors import ConfigError, PlexusError

MATCH_DEFAULT = "hashing,unified"  # bench embeddings: bench.embeddings.MATCHED, unimported here


def _job(args: argparse.Namespace):  # -> JobConfig
    from plexus.pipelines.config import config_path, load_job_config

    return load_job_config(config_path(args.config), args.overrides)


def cmd_synth(args: argparse.Namespace) -> None:

    from plexus.pipelines.data import synth

    out = Path(args.out)
    if args.rows < 1:
        raise ConfigError(f"--rows {args.rows}: give a positive number of rows")
    if not 0 <= args.malformed <= args.rows:
        raise ConfigError(f"--malformed {args.malformed}: give 0 to --rows ({args.rows}) lines")
    if args.format == "criteo" and (out.is_dir() or not out.name):
        raise ConfigError(f"--out {args.out}: is a folder; give a file path such as runs/c.tsv")
    if args.format == "criteo":
        path = synth.synth_criteo(out, rows=args.rows, seed=args.seed, malformed=args.malformed)
    elif args.format == "interactions":
        path = synth.synth_interactions(out, interactions=args.rows, seed=args.seed)
    else:
        path = synth.synth_movielens(out, ratings=args.rows, seed=args.seed)
    print(path)


def cmd_ingest(args: argparse.Namespace) -> None:
    from plexus.pipelines.config import config_path
    from plexus.pipelines.jobs import run_ingest
    from plexus.pipelines.retrieval import is_retrieval_config

    if is_retrieval_config(config_path(args.config)):  # an interaction log: same ingest job
        from plexus.pipelines.retrieval import ingest_interactions, load_retrieval_config
        from plexus.pipelines.retrieval.job import data_dir

        job = load_retrieval_config(config_path(args.config), args.overrides)
        result, _ = ingest_interactions(job.data, data_dir(job))
    else:
        result = run_ingest(_job(args))
    print(f"[plexus] rows: {result.rows}  rejects: {result.rejects or 'none'}")
    print(result.output)


def cmd_train(args: argparse.Namespace) -> None:
    from plexus.pipelines.jobs import run_ingest
    from plexus.pipelines.train.job import train

    job = _job(args)
    result = train(job, run_ingest(job), force=args.force)
    print(f"[plexus] MLflow run: {result.run_id}")
    print(result.metrics_path)


def cmd_evaluate(args: argparse.Namespace) -> None:
    from plexus.pipelines.train.evaluate import evaluate, iter_batches
    from plexus.pipelines.train.job import load_model
    from plexus.platform.feature_spec import FeatureSpec

    model, job = load_model(args.model)
    data = Path(args.data)
    shards = sorted((data / args.split).glob("*.parquet"))
    if not shards:
        raise PlexusError(
            f"no {args.split!r} shards under {data}; pass the folder `plexus ingest` printed"
        )
    spec = FeatureSpec.load(data)
    trained_on = FeatureSpec.load(args.model).fingerprint
    if spec.fingerprint != trained_on:
        raise PlexusError(
            f"{data} was ingested with feature spec {spec.fingerprint}, but the model in "
            f"{args.model} was trained on spec {trained_on}: its ids mean other values there. "
            "Pass the data folder the model was trained on, or ingest the new data with the "
            "model's spec"
        )
    metrics = evaluate(model, iter_batches(shards, spec, job.train.eval_batch_size))
    print(json.dumps({f"{args.split}_{k}": v for k, v in metrics.items()}))


def cmd_run(args: argparse.Namespace) -> None:
    from plexus.pipelines.config import config_path
    from plexus.pipelines.jobs import run_job
    from plexus.pipelines.retrieval import (
        is_retrieval_config,
        load_retrieval_config,
        run_retrieval_job,
    )

    path = config_path(args.config)
    if is_retrieval_config(path):
        outcome = run_retrieval_job(load_retrieval_config(path, args.overrides))
        print(f"[plexus] MLflow run: {outcome['run_id']}")
        print(f"[plexus] registered {outcome['model_name']} version {outcome['version']}")
        if "promotion" in outcome:
            print(f"[plexus] promotion gate: {outcome['promotion']['decision']}")
        print(outcome["output"])
        return
    result = run_job(_job(args), force=args.force)
    print(f"[plexus] MLflow run: {result.run_id}")
    print(result.metrics_path)


def cmd_demo(args: argparse.Namespace) -> None:
    from plexus.pipelines.demo import run_demo

    run_demo(interactions=args.interactions, folder=Path(args.out), overrides=args.overrides)


def cmd_tune(args: argparse.Namespace) -> None:
    from plexus.pipelines.tune import load_space, tune

    result = tune(
        _job(args),
        load_space(args.space),
        trials=args.trials,
        command=" ".join(["plexus", "tune", *sys.argv[2:]]) if sys.argv[1:2] == ["tune"] else None,
    )
    print(f"[plexus] MLflow run: {result.run_id}")
    print(result.best_config)


def cmd_export(args: argparse.Namespace) -> None:
    from plexus.pipelines.config import config_path
    from plexus.pipelines.retrieval import export_retrieval, load_retrieval_config

    outcome = export_retrieval(load_retrieval_config(config_path(args.config), args.overrides))
    print(f"[plexus] registered {outcome['model_name']} version {outcome['version']}")
    if "promotion" in outcome:
        print(f"[plexus] promotion gate: {outcome['promotion']['decision']}")
    print(outcome["version"])


def cmd_promote(args: argparse.Namespace) -> None:
    from plexus.pipelines.config import config_path
    from plexus.pipelines.promote import promote
    from plexus.pipelines.retrieval import load_retrieval_config

    config = load_retrieval_config(config_path(args.config), args.overrides)
    outcome = promote(config, candidate=args.candidate)
    print(f"[plexus] {outcome.model}: {outcome.summary()}")
    print(outcome.decision)


def cmd_bench_retrieval(args: argparse.Namespace) -> None:
    from plexus.pipelines.retrieval import bench_retrieval

    bench_retrieval(
        args.format,
        Path(args.data),
        Path(args.out),
        ks=tuple(int(k) for k in args.k.split(",")),
        overrides=args.set or (),
        tune_power=_floats(args.tune_power),
        tune_smoothing=_floats(args.tune_smoothing),
        tune_prior=_floats(args.tune_prior),
        min_diversity=args.min_diversity,
    )


def _floats(listed: str | None) -> list[float]:
    """'0.5,0.7,1' -> [0.5, 0.7, 1.0]; None -> []."""
    return [float(x) for x in listed.split(",")] if listed else []


def cmd_bench_ingest(args: argparse.Namespace) -> None:
    from plexus.pipelines.bench.ingest import bench_ingest

    bench_ingest(
        Path(args.out), rows=args.rows, seed=args.seed, repeats=args.repeats, workers=args.workers
    )


def cmd_bench_train(args: argparse.Namespace) -> None:
    from plexus.pipelines.bench.train import bench_train

    workers = tuple(int(w) for w in args.workers.split(","))
    bench_train(Path(args.out), rows=args.rows, seed=args.seed, workers=workers)


def cmd_bench_search(args: argparse.Namespace) -> None:
    from plexus.pipelines.bench.search import bench_search
    from plexus.pipelines.config import config_path

    workers = [int(w) for w in args.workers.split(",")]
    bench_search(
        config_path(args.config),
        args.overrides,
        Path(args.out),
        workers=workers,
        generations=args.generations,
    )


def cmd_bench_quality(args: argparse.Namespace) -> None:
    from plexus.pipelines.bench.quality import bench_quality

    bench_quality(
        Path(args.out),
        data_root=Path(args.data_root),
        backbones=[b for b in args.backbones.split(",") if b],
        datasets=args.datasets.split(","),
        seeds=args.seeds,
        with_baselines=not args.no_baselines,
        folds=args.folds,
    )


def cmd_bench_embeddings(args: argparse.Namespace) -> None:
    from plexus.pipelines.bench.embeddings import (
        bench_embedding_throughput,
        bench_embeddings,
        parse_budget,
        parse_seeds,
    )

    seeds = None if args.seeds is None else parse_seeds(args.seeds)

    if args.match != MATCH_DEFAULT and (args.task == "retrieval" or args.throughput_only):
        raise ConfigError(
            "--match chooses the rows trained at each learned CTR row's bytes: it has no effect "
            "with --task retrieval or --throughput-only; leave it out"
        )
    if args.task == "retrieval":
        from plexus.pipelines.bench.retrieval_embeddings import bench_retrieval_embeddings

        bench_retrieval_embeddings(
            Path(args.data),
            Path(args.out),
            fmt=args.format,
            methods=args.methods.split(","),
            budgets=[parse_budget(b) for b in args.budgets.split(",")],
            seeds=1 if seeds is None else seeds,
            chunks=args.chunks,
            config=args.config,
            overrides=args.set or (),
            tracking_uri=os.environ.get("MLFLOW_TRACKING_URI"),
            force=args.force,
        )
        return
    if args.format == "lightgcn":
        raise ConfigError("--format lightgcn is an interaction log: add --task retrieval")
    common = {
        "methods": args.methods.split(","),
        "budgets": [parse_budget(b) for b in args.budgets.split(",")],
        "chunks": args.chunks,
        "config": args.config,
        "overrides": args.set or (),
    }
    where = (args.format, Path(args.data), Path(args.out))
    if args.throughput_only:
        bench_embedding_throughput(*where, **common, batches=args.throughput_batches or 40)
        return
    bench_embeddings(
        *where,
        **common,
        seeds=3 if seeds is None else seeds,
        tracking_uri=os.environ.get("MLFLOW_TRACKING_URI"),
        force=args.force,
        throughput_batches=args.throughput_batches,
        matched=[m for m in args.match.split(",") if m],
    )


def cmd_serve(args: argparse.Namespace) -> None:
    from plexus.serving.server import config_from_args, serve

    serve(config_from_args(args))


def cmd_daily(args: argparse.Namespace) -> None:
    from plexus.pipelines.daily.job import run_days

    job = _job(args)
    state = Path(args.state) if args.state else Path(job.output or "runs") / job.name / "daily"
    records = run_days(job, args.day, state, cold=args.cold)
    print(f"[plexus] {len(records)} days; the last model: {records[-1]['model']}")
    print(state / "latest.json")


def cmd_bench_daily(args: argparse.Namespace) -> None:
    from plexus.pipelines.daily.bench import bench_daily

    bench_daily(
        Path(args.out), days=args.days, rows=args.rows, drift=args.drift, epochs=args.epochs
    )


def cmd_bench_neighbours(args: argparse.Namespace) -> None:
    from plexus.pipelines.bench.neighbours import bench_neighbours

    bench_neighbours(
        Path(args.out),
        users=[int(n) for n in args.users.split(",")],
        dim=args.dim,
        neighbors=args.neighbors,
        queries=args.queries,
        table=Path(args.table) if args.table else None,
    )


def cmd_bench_serve(args: argparse.Namespace) -> None:
    from plexus.pipelines.bench.serve import bench_serve

    if args.soak:
        from plexus.pipelines.bench.soak import bench_soak

        result = bench_soak(
            Path(args.out),
            seconds=args.soak,
            swap_every=args.swap_every,
            items=args.items,
            users=args.users,
            concurrency=max(int(c) for c in args.concurrency.split(",")),
        )
        if result["failed_requests"] or result["unknown_versions_served"]:
            raise PlexusError(f"the soak failed: {result}")
        return
    bench_serve(
        Path(args.out),
        items=args.items,
        users=args.users,
        duration=args.duration,
        concurrency=tuple(int(c) for c in args.concurrency.split(",")),
        batching=tuple(args.batching.split(",")),
    )


def bundled_config_names() -> list[str]:
    """The bundled configs' names, read here rather than from `config` (which imports torch)."""
    return sorted(p.stem for p in (Path(__file__).parent / "configs").glob("*.yaml"))


def _add_job_args(parser: argparse.ArgumentParser, *, force: bool = True) -> None:
    parser.add_argument(
        "config",
        help=f"job YAML path or bundled config name ({', '.join(bundled_config_names())})",
    )
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.epochs=3")
    if force:
        parser.add_argument(
            "--force", action="store_true", help="redo work even if an identical run finished"
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="plexus", description=__doc__.splitlines()[0])
    verbs = parser.add_subparsers(dest="verb", required=True)

    data = verbs.add_parser("data", help="data utilities").add_subparsers(
        dest="data_verb", required=True
    )
    synth = data.add_parser("synth", help="write a synthetic dataset with planted signal")
    synth.add_argument(
        "--format", choices=("criteo", "movielens", "interactions"), default="criteo"
    )
    synth.add_argument(
        "--rows",
        type=int,
        default=100_000,
        help="rows (criteo), ratings (movielens) or interactions (LightGCN)",
    )
    synth.add_argument("--out", required=True, help="output file (criteo) or folder")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--malformed", type=int, default=0, help="malformed lines to plant (criteo)")
    synth.set_defaults(func=cmd_synth)

    for name, func, helptext, force in (
        ("ingest", cmd_ingest, "raw logs -> Parquet shards + feature spec", False),
        ("train", cmd_train, "train a model on ingested shards (ingesting first if needed)", True),
        ("run", cmd_run, "ingest -> train -> evaluate as one tracked MLflow run", True),
    ):
        sub = verbs.add_parser(name, help=helptext)
        _add_job_args(sub, force=force)
        sub.set_defaults(func=func)

    demo = verbs.add_parser(
        "demo",
        help="the whole mission on the embedded default: log -> ingest -> train -> export -> "
        "registry -> service -> one retrieval answered",
    )
    demo.add_argument("--interactions", type=int, default=90_000, help="size of the synthetic log")
    demo.add_argument("--out", default="runs/demo", help="folder for the log and service files")
    demo.add_argument(
        "overrides", nargs="*", help="overrides of the demo config, e.g. train.epochs=2"
    )
    demo.set_defaults(func=cmd_demo)

    daily = verbs.add_parser(
        "daily",
        help="train on daily snapshots in order, each day warm-started from the previous one",
    )
    _add_job_args(daily, force=False)
    daily.add_argument(
        "--day", action="append", required=True, metavar="FILE",
        help="a day's input file; repeat in day order (days already trained are reused)",
    )  # fmt: skip
    daily.add_argument(
        "--state", help="folder of the days' ids and models (default: runs/NAME/daily)"
    )
    daily.add_argument("--cold", action="store_true", help="train each day from scratch")
    daily.set_defaults(func=cmd_daily)

    tune_verb = verbs.add_parser(
        "tune", help="hyper-parameter search on Ray Tune; writes the best config as a YAML"
    )
    _add_job_args(tune_verb, force=False)
    tune_verb.add_argument(
        "--space", required=True, help="search-space YAML (e.g. configs/spaces/movielens.yaml)"
    )
    tune_verb.add_argument(
        "--trials", type=int, help="sampled configurations (default: the space's)"
    )
    tune_verb.set_defaults(func=cmd_tune)

    export = verbs.add_parser(
        "export", help="export a trained retrieval model as a registered bundle"
    )
    _add_job_args(export, force=False)
    export.set_defaults(func=cmd_export)

    promote_verb = verbs.add_parser(
        "promote",
        help="move the serving alias to a registered retrieval version if it beats the champion",
    )
    _add_job_args(promote_verb, force=False)
    promote_verb.add_argument(
        "--candidate", metavar="VERSION", help="registered version to gate (default: the newest)"
    )
    promote_verb.set_defaults(func=cmd_promote)

    evaluate = verbs.add_parser("evaluate", help="AUC and logloss of a trained model on a split")
    evaluate.add_argument("--model", required=True, help="a run's model/ folder")
    evaluate.add_argument("--data", required=True, help="an ingested data folder")
    evaluate.add_argument("--split", default="test", choices=("train", "valid", "test"))
    evaluate.set_defaults(func=cmd_evaluate)

    from plexus.serving.server import build_parser as build_serve_parser

    serve = verbs.add_parser("serve", help="the online candidate-retrieval service (onnxruntime)")
    build_serve_parser(serve)
    serve.set_defaults(func=cmd_serve)

    bench = verbs.add_parser(
        "bench", help="benchmarks that print figures and ratios"
    ).add_subparsers(dest="bench_verb", required=True)
    b = bench.add_parser("ingest", help="full ingest vs bare polars.read_csv on synthetic Criteo")
    b.add_argument("--out", required=True)
    b.add_argument("--rows", type=int, default=1_000_000)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--repeats", type=int, default=2)
    b.add_argument("--workers", type=int, default=0, help="Ray tasks in flight (0: threads)")
    b.set_defaults(func=cmd_bench_ingest)
    b = bench.add_parser("train", help="DeepFM through the pipeline vs a bare PyTorch loop")
    b.add_argument("--out", required=True)
    b.add_argument("--rows", type=int, default=200_000)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument(
        "--workers", default="1", help="worker counts to time, e.g. 1,2 (tables sharded)"
    )
    b.set_defaults(func=cmd_bench_train)
    b = bench.add_parser(
        "search", help="a learned method's search stage, one worker against all cores"
    )
    _add_job_args(b, force=False)
    b.add_argument("--out", required=True)
    b.add_argument("--workers", default="1,0", help="worker counts to time (0: one per core)")
    b.add_argument("--generations", type=int, help="search generations (default: the job's)")
    b.set_defaults(func=cmd_bench_search)
    b = bench.add_parser("quality", help="test AUC/logloss of each backbone on the real samples")
    b.add_argument("--out", required=True)
    b.add_argument(
        "--data-root", default="../shared/data", help="folder holding the shared datasets"
    )
    b.add_argument("--backbones", default="lr,fm,deepfm,dcnv2", help="'' for baselines only")
    b.add_argument("--datasets", default="movielens,movielens_random,movielens_1m,criteo,avazu")
    b.add_argument(
        "--seeds", type=int, help="training seeds (default: 3 for criteo/avazu, 1 otherwise)"
    )
    b.add_argument("--no-baselines", action="store_true", help="skip the non-neural baselines")
    b.add_argument(
        "--folds",
        type=int,
        default=0,
        help="run everything on K cross-validation folds of the non-test rows, the same test "
        "rows for each (default 0: the dataset's own split; seeds then default to 1)",
    )
    b.set_defaults(func=cmd_bench_quality)
    b = bench.add_parser(
        "embeddings", help="test AUC vs embedding parameters for every method and budget"
    )
    b.add_argument(
        "--format",
        required=True,
        choices=("criteo", "avazu", "movielens", "parquet", "lightgcn"),
        help="parquet needs --config with a data.schema (e.g. movielens_1m); lightgcn (a "
        "train.txt/test.txt folder) and movielens with --task retrieval",
    )
    b.add_argument(
        "--task",
        choices=("ctr", "retrieval"),
        default="ctr",
        help="ctr: test AUC of the CTR model; retrieval: Recall@20 / NDCG@20 of the two-tower "
        "model (set its epochs and width with --set train.epochs=N --set model.dim=D)",
    )
    b.add_argument(
        "--data", required=True, help="input file, or a folder with train/dev/test files"
    )
    b.add_argument("--out", required=True)
    b.add_argument(
        "--methods",
        default="full,hashing,multiplexed,unified,optembed",
        help="comma-separated; a learned method runs on each of its bases, or name one "
        "(optembed:full, optembed:unified)",
    )
    b.add_argument(
        "--budgets", default="1,1/4,1/16,1/64", help="fractions of the full tables' parameters"
    )
    b.add_argument(
        "--seeds",
        help="a count (default: 3 for ctr, 1 for retrieval: seeds 0..N-1), a range (3-4) or "
        "a list (3,4)",
    )
    b.add_argument("--chunks", type=int, default=2, help="Unified Embedding chunks per feature")
    b.add_argument("--force", action="store_true", help="retrain rows that already finished")
    b.add_argument("--config", help="job config (bundled name or YAML) giving the hyper-parameters")
    b.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a job config key")
    b.add_argument(
        "--throughput-batches",
        type=int,
        default=40,
        help="training batches per model for the back-to-back throughput comparison (0: skip)",
    )
    b.add_argument(
        "--throughput-only",
        action="store_true",
        help="measure only the back-to-back training throughput (no test runs)",
    )
    b.add_argument(
        "--match",
        default=MATCH_DEFAULT,
        help="plain methods trained again at each learned row's bytes ('' for none)",
    )
    b.set_defaults(func=cmd_bench_embeddings)
    b = bench.add_parser(
        "retrieval", help="kNN-Embed vs single-vector retrieval: recall and diversity"
    )
    b.add_argument("--format", required=True, choices=("movielens", "lightgcn"))
    b.add_argument(
        "--data", required=True, help="MovieLens folder/file or LightGCN train/test folder"
    )
    b.add_argument("--out", required=True)
    b.add_argument("--k", default="20,50,100,200")
    b.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key")
    b.add_argument(
        "--tune-power",
        metavar="P,P,...",
        help="choose the allocation power among these on a validation split (trains a 2nd model)",
    )
    b.add_argument(
        "--tune-smoothing",
        metavar="S,S,...",
        help="choose kNN-Embed's neighbour smoothing among these, on the same validation split",
    )
    b.add_argument(
        "--tune-prior",
        metavar="W,W,...",
        help="choose the popularity prior's weight (export.popularity_prior) among these, "
        "first, on the same validation split (single-vector recall at the smallest K)",
    )
    b.add_argument(
        "--min-diversity",
        type=float,
        metavar="RATIO",
        help="tuning keeps settings with >= RATIO x single-vector's distinct clusters "
        "(default 1.2); 0 chooses by recall alone",
    )
    b.set_defaults(func=cmd_bench_retrieval)
    b = bench.add_parser(
        "neighbours", help="the export's nearest-user step: exact vs HNSW as users grow"
    )
    b.add_argument("--out", required=True)
    b.add_argument("--users", default="30000,200000,1000000", help="planted user counts")
    b.add_argument("--dim", type=int, default=64, help="user vector width (planted users)")
    b.add_argument("--neighbors", type=int, default=20, help="kNN-Embed's neighbours per user")
    b.add_argument("--queries", type=int, default=2048, help="users timed, scaled to all")
    b.add_argument("--table", help="a trained model's user table (.npy, (U+1, D)) instead")
    b.set_defaults(func=cmd_bench_neighbours)
    b = bench.add_parser(
        "daily", help="next-day AUC: warm-started daily training vs from scratch vs never"
    )
    b.add_argument("--out", required=True)
    b.add_argument("--days", type=int, default=6)
    b.add_argument("--rows", type=int, default=100_000, help="rows per day")
    b.add_argument("--drift", type=float, default=0.03, help="popularity shift per day")
    b.add_argument("--epochs", type=int, default=2)
    b.set_defaults(func=cmd_bench_daily)

    b = bench.add_parser("serve", help="HTTP QPS/latency of the service vs bare in-process queries")
    b.add_argument("--out", required=True)
    b.add_argument("--items", type=int, default=1_000_000)
    b.add_argument("--users", type=int, default=100_000, help="synthetic known users in the bundle")
    b.add_argument("--duration", type=float, default=10.0, help="seconds per load level")
    b.add_argument("--concurrency", default="1,8,32,64")
    b.add_argument("--batching", default="inline,loop,micro", help="service batching modes")
    b.add_argument(
        "--soak", type=float, metavar="SECONDS",
        help="instead: steady load for SECONDS with an alias move every --swap-every seconds",
    )  # fmt: skip
    b.add_argument("--swap-every", type=float, default=60.0, help="soak: seconds between swaps")
    b.set_defaults(func=cmd_bench_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from plexus.pipelines.runtime import quiet_environment

    quiet_environment()
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except PlexusError as exc:
        print(f"plexus: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        cause = _storage_error(exc)
        if cause is None:
            raise
        print(f"plexus: error: {cause}", file=sys.stderr)
        return 2
    return 0


def _storage_error(exc: BaseException) -> str | None:
    """A one-line message for a full, read-only or forbidden output folder, found in `exc` or
    its causes (Ray and pyarrow wrap the OSError); None for any other error. Jobs write to a
    temporary name and rename, so the previous outputs are still whole when this happens."""
    from plexus.pipelines.files import STORAGE_ERRNOS, storage_error
    from plexus.pipelines.tracking import ARTIFACTS_DIRNAME

    found = storage_error(exc)
    if found is None:
        return None
    # A copy's error names its source first and its destination second (shutil).
    where = getattr(found, "filename2", None) or found.filename or "the output folder"
    if ARTIFACTS_DIRNAME in Path(str(where)).parts:  # the embedded store's artifact folder
        where = f"{where} (the MLflow artifact store, beside tracking.uri's database)"
    return f"cannot write {where}: {STORAGE_ERRNOS[found.errno]}; earlier outputs are kept"


if __name__ == "__main__":
    sys.exit(main())
