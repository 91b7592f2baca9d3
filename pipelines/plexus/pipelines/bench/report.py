"""Writing benchmark results: `results.json`, a Markdown table, and a line on the terminal."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A GitHub-flavoured Markdown table of `rows` restricted to `columns`."""

    def cell(value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, float):
            return f"{value:,.4f}" if abs(value) < 100 else f"{value:,.0f}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_results(out: Path, results: Any, *, markdown: str | None = None) -> Path:
    """Write `out/results.json` (and `out/results.md` when given) atomically; return the JSON path."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2, sort_keys=True))
    tmp.replace(path)
    if markdown is not None:
        (out / "results.md").write_text(markdown)
    return path


def publish(
    out: Path,
    rows: Any,
    *,
    markdown: str,
    figure: Any,
    metrics: dict[str, float],
    label: str,
    run_id: str,
    uri: str,
) -> None:
    """A benchmark's outputs, inside its active MLflow run: `results.json` / `results.md` and
    `pareto.png` in `out` and as artifacts, the headline `metrics`, the table on the terminal."""
    import mlflow
    from plexus.pipelines import tracking

    write_results(out, rows, markdown=markdown)
    tracking.log_figure(figure, "pareto.png", also_to=out / "pareto.png")
    mlflow.log_artifact(str(out / "results.json"))
    mlflow.log_artifact(str(out / "results.md"))
    mlflow.log_metrics(metrics)
    print(markdown)
    print(f"[{label}] MLflow run {run_id} at {uri}; results in {out}")
