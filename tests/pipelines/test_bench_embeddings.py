"""`plexus bench embeddings`: the plan, the budget arithmetic, the summary, and one tiny real run."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from plexus.models.embeddings import (
    EmbeddingConfig,
    EmbeddingMethod,
    LearnedOptions,
    build_embedding_tables,
    full_table_parameters,
    learned_options,
    registered_methods,
)
from plexus.pipelines.bench.embeddings import (
    LEARNED,
    MATCHED,
    ROW_KEYS,
    _base_job,
    _command,
    _data_section,
    bench_embeddings,
    budget_label,
    embedding_for,
    learned_comparison,
    parse_budget,
    parse_seeds,
    plan_matched,
    plan_rows,
    results_markdown,
    summarise,
    targets,
)
from plexus.pipelines.config import config_path, load_job_config, tuned_config
from plexus.pipelines.data.synth import synth_criteo
from plexus.pipelines.ingest import DataConfig, DataFormat
from plexus.platform.config import from_dict
from plexus.platform.errors import ConfigError
from plexus.platform.feature_spec import Encoding, Feature, FeatureKind


def _features() -> list[Feature]:
    sizes = {"a": 5_000, "b": 1_200, "c": 300, "d": 37}
    return [
        Feature(name=n, kind=FeatureKind.CATEGORICAL, encoding=Encoding.VOCAB, cardinality=c)
        for n, c in sizes.items()
    ]


@pytest.mark.parametrize("method", ["hashing", "multiplexed", "unified"])
@pytest.mark.parametrize("budget", [1.0, 1 / 4, 1 / 16, 1 / 64])
def test_each_method_holds_the_budget_fraction_of_the_full_table_at_full_width(
    method, budget
) -> None:
    features = _features()
    config = embedding_for(method, budget, dim=16, chunks=2)
    tables = build_embedding_tables(config, features)
    full = full_table_parameters(features, 16)
    assert abs(tables.num_parameters() - budget * full) <= 16  # rounding to whole rows
    assert set(tables.output_dims().values()) == {16}  # same feature width as the full table


def test_unified_splits_the_width_into_chunks_where_the_budget_allows() -> None:
    assert (embedding_for("unified", 1 / 16, dim=16, chunks=4).chunks,
            embedding_for("unified", 1 / 16, dim=16, chunks=4).dim) == (4, 4)  # fmt: skip
    at_one = embedding_for("unified", 1.0, dim=16, chunks=2)  # 2 chunks would need budget 2
    assert (at_one.chunks, at_one.dim, at_one.budget) == (1, 16, 1.0)
    assert embedding_for("unified", 1 / 4, dim=16, chunks=3).chunks == 2  # 3 does not divide 16
    assert embedding_for("full", 1.0, dim=8, chunks=2).budget == 1.0


def test_plan_runs_full_once_per_seed_and_the_others_at_every_budget() -> None:
    plan = plan_rows(["unified", "full", "hashing"], [1 / 16, 1.0], seeds=2, chunks=2, dim=16)
    assert [(m, b, s) for m, b, _, s in plan] == [
        (m, b, s)
        for s in (0, 1)
        for m, b in [
            ("full", 1.0),
            ("hashing", 1.0),
            ("hashing", 1 / 16),
            ("unified", 1.0),
            ("unified", 1 / 16),
        ]
    ]
    learned = plan_rows(["optembed", "full"], [1 / 4], seeds=1, chunks=2, dim=16)
    assert [(m, b) for m, b, _, _ in learned] == [
        ("full", 1.0),
        ("optembed:full", 0.25),
        ("optembed:unified", 0.25),
    ]
    on_full, on_unified = learned[1][2], learned[2][2]
    assert (on_full.base_method.value, on_full.budget, on_full.options.search_budget) == (
        "full",
        1.0,
        0.25,
    )  # prunes the full tables down to a quarter of their bytes
    assert on_unified.base_method.value == "unified" and on_unified.chunks == 2
    assert on_unified.budget / on_unified.chunks == pytest.approx(0.95 * 0.25)
    assert on_unified.options.search_budget == 0.25  # a unified table just under b, searched to b
    # The linear part's tables are cut to b with the full tables (a shared base cuts its own):
    # into one shared table, or by the method itself where its `at_budget` says so (DNIS).
    assert (on_full.first_order_budget, on_unified.first_order_budget) == (0.25, None)
    assert embedding_for("dsl", 1 / 4, dim=16, chunks=2, base="full").first_order_budget == 0.25
    dnis = embedding_for("dnis", 1 / 4, dim=16, chunks=2, base="full")
    assert (dnis.first_order_budget, dnis.options.prune_first_order) == (None, True)
    assert dnis.first_order_config().method.value == "dnis"
    whole = embedding_for("dnis", 1.0, dim=16, chunks=2, base="full")
    assert (whole.first_order_budget, whole.options.prune_first_order) == (None, False)
    assert not embedding_for(
        "dnis", 1 / 4, dim=8, chunks=2, base="unified"
    ).options.prune_first_order
    # A job's `keep_first_order` takes the place of the row's pruned linear part: kept whole,
    # inside the row's budget (no shared first-order table either).
    keep = from_dict(
        EmbeddingConfig, {"method": "dnis", "options": {"keep_first_order": True, "l1": 0.001}}
    )
    kept = embedding_for("dnis", 1 / 4, dim=16, chunks=2, base="full", configured=keep)
    assert (kept.options.prune_first_order, kept.options.keep_first_order) == (False, True)
    assert (kept.first_order_budget, kept.options.search_budget, kept.options.l1) == (
        None,
        0.25,
        0.001,
    )
    own = plan_rows(["optembed:unified@1/16", "hashing"], [1 / 4], seeds=1, chunks=2, dim=16)
    assert [(m, b) for m, b, _, _ in own] == [("hashing", 0.25), ("optembed:unified", 1 / 16)]
    with pytest.raises(ConfigError, match="optembed:unified"):
        plan_rows(["optembed:dnis"], [1.0], seeds=1, chunks=2, dim=16)
    with pytest.raises(ConfigError, match="budgets"):
        plan_rows(["hashing"], [2.0], seeds=1, chunks=2, dim=16)


def test_seeds_are_a_count_a_range_or_a_list() -> None:
    assert [parse_seeds(t) for t in ("3", "3-4", "3,4", "7-7")] == [3, (3, 4), (3, 4), (7,)]
    plan = plan_rows(["full", "hashing"], [1 / 4], seeds=parse_seeds("3,5"), chunks=2, dim=16)
    assert [(m, s) for m, _, _, s in plan] == [
        ("full", 3), ("hashing", 3), ("full", 5), ("hashing", 5)
    ]  # fmt: skip
    # The rows of seed 3 are those a count of 4 plans for it: a folder can be extended either way.
    counted = plan_rows(["full", "hashing"], [1 / 4], seeds=4, chunks=2, dim=16)
    assert [r for r in counted if r[3] == 3] == [r for r in plan if r[3] == 3]
    for bad in ("x", "3,x", "4-"):
        with pytest.raises(ConfigError, match="--seeds"):
            parse_seeds(bad)
    for seeds in (0, (), (1, 1), (-1,)):
        with pytest.raises(ConfigError, match="--seeds"):
            plan_rows(["full"], [1.0], seeds=seeds, chunks=2, dim=16)


def test_plan_keeps_the_configs_options_of_its_learned_method() -> None:
    configured = from_dict(
        EmbeddingConfig,
        {
            "method": "dsl",
            "dim": 16,
            "options": {"density": 0.3, "delta_t": 2000, "zeta_end": 0.01},
        },
    )
    plan = plan_rows(["dsl:full", "optembed:full"], [1.0, 1 / 4], 1, 2, 16, configured)
    dsl = {b: e.options for m, b, e, _ in plan if m == "dsl:full"}
    assert {b: (o.delta_t, o.zeta_end) for b, o in dsl.items()} == {
        1.0: (2000, 0.01),
        0.25: (2000, 0.01),
    }  # the config's schedule on every row; the row's budget sizes it, not the config's density
    assert (dsl[1.0].density, dsl[0.25].density, dsl[0.25].byte_budget) == (None, None, 0.25)
    optembed = [e.options for m, _, e, _ in plan if m == "optembed:full"]
    assert optembed and all(not hasattr(o, "delta_t") for o in optembed)  # another method's


def _builds_on_a_base(method: str) -> bool:
    """Whether `method`'s options name a base (a learned method), read off the dataclass."""
    options = from_dict(EmbeddingConfig, {"method": method}).options
    return options is not None and "base" in {f.name for f in dataclasses.fields(options)}


BUILDS_ON_A_BASE = sorted(m.value for m in registered_methods() if _builds_on_a_base(m.value))


@pytest.mark.parametrize("method", BUILDS_ON_A_BASE)
@pytest.mark.parametrize("base", ["full", "unified"])
def test_every_learned_method_sizes_its_rows_through_its_own_options(method, base) -> None:  # noqa: ANN001
    """The bench knows no learned method by name: every method whose options name a base has
    rows (its options derive `LearnedOptions`), and its `at_budget` sets only the keys it
    declares, so a job's other options survive."""
    assert set(LEARNED) == set(BUILDS_ON_A_BASE) >= {"optembed", "dnis", "dsl"}
    options = type(from_dict(EmbeddingConfig, {"method": method, "options": {}}).options)
    assert (
        issubclass(options, LearnedOptions) and learned_options(EmbeddingMethod(method)) is options
    )
    with pytest.raises(ConfigError, match="'unified' is not a learned method"):
        learned_options(EmbeddingMethod.UNIFIED)
    for budget in (1.0, 1 / 4, 1 / 16):
        start, sized = options.at_budget(base, budget, {})
        assert set(sized) <= {"base", *options.SIZED} and sized["base"] == base
        assert 0.0 < start <= 1.0
        row = embedding_for(method, budget, dim=16, chunks=2, base=base)
        assert (row.method.value, row.base_method.value) == (method, base)


def test_budgets_parse_from_fractions_and_label_back() -> None:
    assert (
        parse_budget("1/16") == 1 / 16 and parse_budget("0.25") == 0.25 and parse_budget("1") == 1.0
    )
    assert [budget_label(b) for b in (1.0, 1 / 4, 1 / 64, 0.3)] == ["1", "1/4", "1/64", "0.3"]
    for bad in ("0", "2", "1/0", "a/b"):
        with pytest.raises(ConfigError):
            parse_budget(bad)


def test_summary_averages_seeds_and_checks_the_targets_against_full_and_hashing() -> None:
    def row(method, budget, seed, auc, speed):  # noqa: ANN001, ANN202
        return {"method": method, "budget": budget, "seed": seed, "test_auc": auc, "test_logloss": 0.5,
                "examples_per_s": speed, "params": int(1000 * budget), "bytes": int(4000 * budget),
                "chunks": 1, "param_fraction": budget}  # fmt: skip

    rows = [row("full", 1.0, s, 0.80 + 0.01 * s, 100.0) for s in range(3)]
    for r in rows:
        r["base"] = ""
    rows += [row("hashing", 1 / 16, s, 0.70, 120.0) for s in range(3)]
    rows += [row("unified", 1 / 16, s, 0.805, 90.0) for s in range(3)]
    summary = summarise(rows)
    assert [(s["method"], s["seeds"]) for s in summary] == [
        ("full", 3),
        ("hashing", 3),
        ("unified", 3),
    ]
    full = summary[0]
    assert full["test_auc"] == pytest.approx(0.81) and full["auc_std"] == pytest.approx(0.01)
    goal = targets(summary)
    assert goal["unified_minus_full_auc"] == pytest.approx(-0.005)
    assert goal["unified_minus_hashing_auc"] == pytest.approx(0.105)
    assert goal["unified_speed_vs_full"] == pytest.approx(0.9)

    # Back-to-back figures, where measured, replace the jobs' own in the speed ratios.
    for r in rows:
        r["b2b_examples_per_s"] = {"full": 200.0, "hashing": 210.0, "unified": 180.0}[r["method"]]
    summary = summarise(rows)
    assert [s["examples_per_s"] for s in summary] == [100.0, 120.0, 90.0]  # the jobs' figures
    assert targets(summary)["unified_speed_vs_full"] == pytest.approx(0.9)
    assert summary[1]["speed_vs_full"] == pytest.approx(1.05)
    text = results_markdown("t", rows, summary, command="plexus bench embeddings")
    assert "unified - full test AUC = -0.0050" in text
    # Without unified rows there is no target to report (it printed "n/a" three times).
    plain = [r for r in rows if r["method"] != "unified"]
    text = results_markdown("t", plain, summarise(plain), command="plexus bench embeddings")
    assert "unified - full" not in text and "n/a" not in text


def test_rows_matched_to_a_learned_row_average_over_seeds_at_their_own_bytes() -> None:
    def row(method, base, budget, seed, auc, **more):  # noqa: ANN001, ANN202
        return {"method": method, "base": base, "budget": budget, "seed": seed, "test_auc": auc,
                "test_logloss": 0.5, "examples_per_s": 100.0, "params": int(1000 * budget),
                "bytes": int(4000 * budget), "chunks": 1, "param_fraction": budget, **more}  # fmt: skip

    rows = [row("dsl", "full", 1 / 4, s, 0.78 + 0.002 * s) for s in range(3)]
    # Each seed's DSL row reached other bytes, so its unified match trained at another budget.
    for s, (budget, auc) in enumerate([(0.2904, 0.781), (0.2894, 0.783), (0.2903, 0.785)]):
        rows.append(row("unified", "", budget, s, auc, matched_to="dsl:full", matched_budget=1 / 4))
    summary = summarise(rows)
    unified = [x for x in summary if x["method"] == "unified"]
    assert len(unified) == 1 and unified[0]["seeds"] == 3
    assert unified[0]["test_auc"] == pytest.approx(0.783)
    assert unified[0]["budget"] == pytest.approx((0.2904 + 0.2894 + 0.2903) / 3)
    (line,) = learned_comparison(summary)
    assert line["- unified at its bytes"] == "-0.0010"  # the means, 0.782 - 0.783


def test_each_learned_row_is_matched_by_the_chosen_plain_methods_at_its_bytes(
    tmp_path: Path,
) -> None:
    full_params = 10_000
    dsl = {"method": "dsl", "base": "full", "budget": 1 / 4, "seed": 1, "bytes": 12_000}
    tiny = {"method": "dsl", "base": "full", "budget": 1 / 64, "seed": 1, "bytes": 400}
    plan = plan_matched([dsl, tiny], ("hashing", "unified"), full_params, 200, 16, 2)
    # 400 bytes are 100 parameters, under a row per feature (200): that row gets no match
    assert [(m, f, learned["budget"]) for m, f, _, learned in plan] == [
        ("hashing", 0.3, 1 / 4),
        ("unified", 0.3, 1 / 4),
    ]
    assert plan[1][2] == embedding_for("unified", 0.3, dim=16, chunks=2)
    assert [m for m, *_ in plan_matched([dsl], ("unified",), full_params, 200, 16, 2)] == [
        "unified"
    ]
    assert plan_matched([dsl], (), full_params, 200, 16, 2) == []
    # The reproduction command names a non-default choice; a wrong name is refused up front.
    command = _command("criteo", Path("d.tsv"), Path("o"), ["dsl:full"], [0.25], 1, 2, None, (), ())
    assert command.endswith("--match ''")
    assert "--match" not in _command(
        "criteo", Path("d"), Path("o"), ["full"], [1.0], 1, 2, None, ()
    )
    with pytest.raises(ConfigError, match="--match 'full'"):
        bench_embeddings("criteo", tmp_path / "absent.tsv", tmp_path / "o", matched=("full",))
    # The command line's default is the same list; where nothing is matched, --match is refused.
    from plexus.pipelines import cli

    parser = cli.build_parser()
    assert parser.parse_args(["bench", "embeddings", "--format", "criteo", "--data", "d",
                              "--out", "o"]).match == ",".join(MATCHED)  # fmt: skip
    for extra in (["--task", "retrieval"], ["--throughput-only"]):
        args = parser.parse_args(["bench", "embeddings", "--format", "criteo", "--data", "d",
                                  "--out", "o", "--match", "unified", *extra])  # fmt: skip
        with pytest.raises(ConfigError, match="no effect"):
            args.func(args)


def test_a_data_folder_uses_its_given_splits_and_a_single_file_is_split(tmp_path: Path) -> None:
    for name in ("train.csv", "dev.csv", "test.csv"):
        (tmp_path / name).write_text("")
    template = DataConfig(format=DataFormat.AVAZU, path="x", min_count=3)
    given = _data_section(DataFormat.AVAZU, tmp_path, template)
    assert (Path(given.valid_path).name, Path(given.test_path).name, given.min_count) == (
        "dev.csv",
        "test.csv",
        3,
    )
    single = _data_section(DataFormat.AVAZU, tmp_path / "train.csv", template)
    assert single.valid_path is None and (single.split.valid, single.split.test) == (0.1, 0.1)
    (tmp_path / "dev.csv").unlink()
    with pytest.raises(ConfigError, match="dev"):
        _data_section(DataFormat.AVAZU, tmp_path, template)


def test_methods_are_compared_under_the_datasets_tuned_recipe_unless_a_config_is_given(
    tmp_path: Path,
) -> None:
    for name in ("train.txt", "dev.txt", "test.txt"):
        (tmp_path / name).write_text("")
    tuned = load_job_config(tuned_config("criteo", "deepfm"))

    def job(config: str | None, *overrides: str):
        return _base_job("criteo", tmp_path, tmp_path / "out", config, overrides, None, None)

    assert (job(None).train.lr, job(None).model.hidden) == (tuned.train.lr, tuned.model.hidden)
    bundled = load_job_config(config_path("criteo"))
    assert job("criteo").train.lr == bundled.train.lr != tuned.train.lr
    as_fm = load_job_config(tuned_config("criteo", "fm"))
    assert job(None, "model.backbone=fm").train.lr == as_fm.train.lr  # the backbone's own
    assert job(None, "train.lr=0.5").train.lr == 0.5  # overrides still win


@pytest.mark.slow
def test_a_tiny_benchmark_writes_rows_files_and_nested_mlflow_runs(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # restored after: MLflow sets it
    raw = synth_criteo(tmp_path / "criteo.tsv", rows=6_000, seed=2)
    out = tmp_path / "bench"
    rows = bench_embeddings(
        "criteo", raw, out, methods=("unified", "full"), budgets=(1 / 16, 1 / 4), seeds=1,
        overrides=["train.epochs=1", "train.batch_size=512", "model.hidden=[16]", "train.threads_per_worker=1"],
    )  # fmt: skip
    assert [(r["method"], r["budget"]) for r in rows] == [
        ("full", 1.0),
        ("unified", 0.25),
        ("unified", 1 / 16),
    ]
    for row in rows:
        assert set(ROW_KEYS) <= set(row)
        assert 0.0 < row["test_auc"] < 1.0 and row["test_logloss"] > 0 and row["examples_per_s"] > 0
        assert row["bytes"] == 4 * row["params"]
        assert row["b2b_examples_per_s"] > 0
    assert rows[0]["params"] > rows[1]["params"] > rows[2]["params"]
    # 1/16 of the main tables (16 wide) and of DeepFM's width-1 first-order tables, which take
    # 2 chunks' worth: (16 + 2) / 16 of 1/16 of the full 17 parameters per id
    assert rows[2]["param_fraction"] == pytest.approx((16 + 2) / 16 / 17, rel=0.1)
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(rows))
    assert "| unified |  | 1/16 |" in (out / "results.md").read_text()  # no base: a plain method
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG"

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("bench-embeddings")
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 1 + len(rows)  # the shared ingest + one run per row
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"results.json", "results.md", "pareto.png"} <= artifacts
