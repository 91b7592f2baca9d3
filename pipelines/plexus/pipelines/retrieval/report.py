"""The kNN-Embed comparison report: results.json, results.md and retrieval.png."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

COLUMNS = ("recall", "ndcg", "distinct_clusters", "intra_list_distance")
LABELS = {"single": "single", "knn_embed": "kNN-Embed", "popular": "most popular"}


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """Rows (method, k, metrics) as one Markdown table: single-vector, kNN-Embed and the most
    popular items (where the rows have them) side by side."""
    ks = sorted({int(r["k"]) for r in rows})
    by = {(r["method"], int(r["k"])): r for r in rows}
    methods = [m for m in LABELS if any(r["method"] == m for r in rows)]
    head = "| K | " + " | ".join(f"{c} {LABELS[m]}" for c in COLUMNS for m in methods) + " |"
    sep = "|---:" * (1 + len(methods) * len(COLUMNS)) + "|"
    lines = [head, sep]
    for k in ks:
        cells = []
        for c in COLUMNS:
            for method in methods:
                row = by.get((method, k))
                cells.append(f"{row[c]:.4f}" if row else "-")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def flat_metrics(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """The rows as MLflow metrics: `single.recall_at_20`, `knn_embed.ndcg_at_100`, ..."""
    return {f"{r['method']}.{c}_at_{r['k']}": float(r[c]) for r in rows for c in COLUMNS}


def plot(rows: Sequence[dict[str, Any]], *, title: str) -> Any:
    """Recall, distinct clusters and intra-list distance against K for both methods."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    labels = {"single": "single-vector", "knn_embed": "kNN-Embed", "popular": "most popular"}
    for ax, key, name in zip(
        axes,
        ("recall", "distinct_clusters", "intra_list_distance"),
        ("Recall@K", "distinct clusters in top K", "intra-list distance"),
        strict=True,
    ):
        for method, label in labels.items():
            pts = sorted((int(r["k"]), float(r[key])) for r in rows if r["method"] == method)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
        ax.set_xscale("log")
        ks = sorted({int(r["k"]) for r in rows})
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.minorticks_off()
        ax.set_xlabel("K")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def write_report(rows: Sequence[dict[str, Any]], out: str | Path, *, title: str) -> Path:
    """Write `results.json` (the rows), `results.md` and `retrieval.png` into `out`."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(list(rows), indent=1))
    (folder / "results.md").write_text(f"# {title}\n\n{markdown_table(rows)}\n")
    fig = plot(rows, title=title)
    fig.savefig(folder / "retrieval.png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return folder
