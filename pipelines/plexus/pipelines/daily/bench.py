"""`plexus bench daily`: warm-started daily training against retraining from scratch each day and
against never retraining, on a synthetic stream with drifting popularity.

Day d's file is `synth_criteo(day=d, drift=...)`: the values' effects on the label stay, but the
popular values move (new ones rise, old ones fade). Each strategy's model of day d is scored on
day d+1's test split (the next-day AUC, what a daily job is for), read through day d's ids:
values it has no row for fall to the OOV row, as they would in serving.

* warm: `plexus daily` (ids carried over, yesterday's weights as the start);
* scratch: the same ids, weights initialised afresh every day (`cold=True`);
* never: day 0's model, scored on every later day.

Writes DIR/results.json (one row per strategy and day: `strategy`, `day`, `next_day_auc`,
`next_day_logloss`, `same_day_auc`, `train_seconds`), DIR/results.md and DIR/daily.png.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from plexus.pipelines.files import write_json

__all__ = ["bench_daily"]

STRATEGIES = ("warm", "scratch", "never")


def _job(out: Path, epochs: int) -> Any:
    from plexus.pipelines.config import JobConfig
    from plexus.platform.config import from_dict

    return from_dict(
        JobConfig,
        {
            "name": "daily-bench",
            "data": {"format": "criteo", "path": "unused", "split": {"valid": 0.1, "test": 0.1}},
            "model": {"backbone": "deepfm", "hidden": [64, 64]},
            "embedding": {"method": "full", "dim": 8},
            "train": {"batch_size": 1024, "epochs": epochs, "patience": 1},
            "daily": {"admit_after": 2, "evict_after_days": 3},
            "tracking": {"uri": f"sqlite:///{out / 'mlflow.db'}", "experiment": "bench-daily"},
            "output": str(out / "runs"),
        },
    )


def _next_day(record: dict, state_dir: Path, day_index: int, tomorrow: Any) -> dict[str, float]:
    """Day `day_index`'s model of a sequence, scored on `tomorrow`'s test split."""
    from plexus.pipelines.daily.ids import load_states
    from plexus.pipelines.daily.job import remap_day
    from plexus.pipelines.train.evaluate import evaluate, iter_batches
    from plexus.pipelines.train.job import load_model

    states, meta = load_states(state_dir / f"day-{day_index}" / "ids.json")
    model, job = load_model(record["model"])
    with tempfile.TemporaryDirectory() as tmp:
        data = remap_day(tomorrow, states, meta["buckets"], Path(tmp) / "data", change={})
        scores = evaluate(model, iter_batches(data.shards("test"), data.spec, 8192))
    return {"next_day_auc": scores["auc"], "next_day_logloss": scores["logloss"]}


def bench_daily(
    out: Path, *, days: int = 6, rows: int = 100_000, drift: float = 0.03, epochs: int = 2
) -> list[dict[str, Any]]:
    """Run the three strategies over `days` synthetic days of `rows` rows; the result rows."""
    import dataclasses

    from plexus.pipelines.daily.job import run_day
    from plexus.pipelines.data.synth import synth_criteo
    from plexus.pipelines.jobs import run_ingest

    if days < 2:
        raise ValueError(f"--days {days}: need at least 2 days (a model and its next day)")
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    files = [
        synth_criteo(out / "days" / f"day{d}.tsv", rows=rows, seed=0, day=d, drift=drift)
        for d in range(days)
    ]
    job = _job(out, epochs)
    ingested = [
        run_ingest(
            dataclasses.replace(
                job,
                data=dataclasses.replace(job.data, path=str(f), min_count=1),
            ),
            progress=False,
        )
        for f in files
    ]
    rows_out: list[dict[str, Any]] = []
    records: dict[str, list[dict]] = {}
    for strategy, cold in (("warm", False), ("scratch", True)):
        state_dir = out / strategy
        records[strategy] = []
        for d, f in enumerate(files):
            start = time.perf_counter()
            record = run_day(job, f, d, state_dir, cold=cold)
            records[strategy].append({**record, "seconds": time.perf_counter() - start})
        for d in range(days - 1):
            record = records[strategy][d]
            rows_out.append(
                {
                    "strategy": strategy,
                    "day": d,
                    **_next_day(record, state_dir, d, ingested[d + 1]),
                    "same_day_auc": record["metrics"]["test_auc"],
                    "train_seconds": record["seconds"],
                }
            )
    first = records["warm"][0]
    for d in range(days - 1):
        rows_out.append(
            {
                "strategy": "never",
                "day": d,
                **_next_day(first, out / "warm", 0, ingested[d + 1]),
                "same_day_auc": first["metrics"]["test_auc"] if d == 0 else float("nan"),
                "train_seconds": first["seconds"] if d == 0 else 0.0,
            }
        )
    write_json(out / "results.json", rows_out)
    _report(out, rows_out, days=days, rows=rows, drift=drift, epochs=epochs)
    return rows_out


def _report(out: Path, results: list[dict[str, Any]], **setup: Any) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = [
        "# Daily training: next-day test AUC",
        "",
        "Setup: " + ", ".join(f"{k} {v}" for k, v in setup.items()),
        "",
        "| day -> next | " + " | ".join(STRATEGIES) + " |",
        "|---:|" + "---:|" * len(STRATEGIES),
    ]
    by = {(r["strategy"], r["day"]): r for r in results}
    days = sorted({r["day"] for r in results})
    for d in days:
        cells = [f"{by[(s, d)]['next_day_auc']:.4f}" for s in STRATEGIES]
        lines.append(f"| {d} -> {d + 1} | " + " | ".join(cells) + " |")
    means = {s: sum(by[(s, d)]["next_day_auc"] for d in days) / len(days) for s in STRATEGIES}
    seconds = {s: sum(by[(s, d)]["train_seconds"] for d in days) for s in STRATEGIES}
    lines.append("| mean | " + " | ".join(f"**{means[s]:.4f}**" for s in STRATEGIES) + " |")
    lines.append(
        "| training seconds | " + " | ".join(f"{seconds[s]:.0f}" for s in STRATEGIES) + " |"
    )
    (out / "results.md").write_text("\n".join(lines) + "\n")
    figure, axis = plt.subplots(figsize=(6, 3.5))
    for s in STRATEGIES:
        axis.plot(days, [by[(s, d)]["next_day_auc"] for d in days], marker="o", label=s)
    axis.set_xlabel("model of day d, scored on day d+1")
    axis.set_ylabel("next-day test AUC")
    axis.legend()
    figure.tight_layout()
    figure.savefig(out / "daily.png", dpi=120)
    plt.close(figure)
    print((out / "results.md").read_text())
    print(json.dumps({s: round(means[s], 4) for s in STRATEGIES}))
