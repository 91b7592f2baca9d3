"""Ingest throughput and memory: the full job (parse + rejects + split + vocab + encode + write)
vs a bare polars parse of the same file, in the same run.

Both run on the same synthetic Criteo file, each in a fresh child process, so the ratio
`ingest rows/s / polars.read_csv rows/s` is comparable across machines (target >= 0.5) and each
has its own peak memory: the resident memory of the child's whole process tree (Ray workers
included when `--workers` > 0), sampled every 20 ms. Each is timed `repeats` times and the best
is kept (the machines are shared); the CPU-time ratio is reported too, as it varies less with
other load. The ingest streams its input, so its peak memory should not grow with `--rows`.

Run: python -m plexus.pipelines.bench.ingest OUT_DIR [--rows N] [--workers W]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from plexus.pipelines.data.synth import synth_criteo

_PAGE = os.sysconf("SC_PAGE_SIZE")


def bench_ingest(
    out_dir: Path, *, rows: int = 1_000_000, seed: int = 0, repeats: int = 2, workers: int = 0
) -> dict[str, Any]:
    """Time ingest vs `polars.read_csv` on `rows` synthetic Criteo rows; write out_dir/results.json."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    source = out_dir / f"criteo-{rows}-{seed}.txt"
    if not source.is_file():
        synth_criteo(source, rows=rows, seed=seed)
    target = out_dir / "ingest"
    base, full = [], []
    for _ in range(repeats):
        base.append(_child(["baseline", str(source)]))
        assert base[-1]["rows"] == rows
        shutil.rmtree(target, ignore_errors=True)  # a fresh run: no skipping
        full.append(_child(["ingest", str(source), str(target), str(workers)]))
        assert not full[-1]["skipped"] and full[-1]["rows"] == rows
    b = min(base, key=lambda r: r["seconds"])
    i = min(full, key=lambda r: r["seconds"])
    results = {
        "rows": rows,
        "workers": workers,
        "file_mb": round(source.stat().st_size / 2**20, 1),
        "baseline_seconds": round(b["seconds"], 3),
        "ingest_seconds": round(i["seconds"], 3),
        "baseline_rows_per_s": round(rows / b["seconds"]),
        "rows_per_s": round(rows / i["seconds"]),
        "ratio": round(b["seconds"] / i["seconds"], 3),
        "baseline_cpu_seconds": round(min(r["cpu_seconds"] for r in base), 3),
        "ingest_cpu_seconds": round(min(r["cpu_seconds"] for r in full), 3),
        "cpu_ratio": round(
            min(r["cpu_seconds"] for r in base) / min(r["cpu_seconds"] for r in full), 3
        ),
        "peak_rss_bytes": max(r["peak_rss_bytes"] for r in full),
        "baseline_peak_rss_bytes": max(r["peak_rss_bytes"] for r in base),
        "cpu_count": os.cpu_count(),
        "all_baseline_seconds": [round(r["seconds"], 3) for r in base],
        "all_ingest_seconds": [round(r["seconds"], 3) for r in full],
        "splits": i["splits"],
        "features": i["features"],
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=1))
    mb = 2**20
    print(f"{'':28s}{'seconds':>10s}{'rows/s':>14s}{'peak RSS MB':>14s}")
    print(
        f"{'polars.read_csv (bare)':28s}{results['baseline_seconds']:>10.3f}"
        f"{results['baseline_rows_per_s']:>14,}{results['baseline_peak_rss_bytes'] / mb:>14,.0f}"
    )
    print(
        f"{'plexus ingest (full)':28s}{results['ingest_seconds']:>10.3f}"
        f"{results['rows_per_s']:>14,}{results['peak_rss_bytes'] / mb:>14,.0f}"
    )
    print(
        f"ratio ingest/bare = {results['ratio']:.3f} (target >= 0.5), CPU-time ratio "
        f"{results['cpu_ratio']:.3f}; {rows:,} rows, {results['file_mb']} MB, best of {repeats}"
    )
    return results


def _child(args: list[str]) -> dict[str, Any]:
    """Run one measured step in a fresh interpreter; its report plus the tree's peak RSS."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "plexus.pipelines.bench.ingest", "--child", *args],
        stdout=subprocess.PIPE,
        text=True,
    )
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak[0] = max(peak[0], _tree_rss(proc.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = proc.communicate()
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"bench step {args[0]} failed with exit code {proc.returncode}")
    report = json.loads(out.strip().splitlines()[-1])
    report["sampled_rss_bytes"] = peak[0]
    report["peak_rss_bytes"] = max(peak[0], report["maxrss_bytes"])
    return report


def _tree_rss(root: int) -> int:
    """Resident bytes of `root` and all its descendants (from /proc; 0 once it is gone)."""
    parents: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo.extend(parents.get(pid, []))
        try:
            with open(f"/proc/{pid}/statm") as fh:
                total += int(fh.read().split()[1]) * _PAGE
        except (OSError, IndexError, ValueError):
            continue
    return total


def _run_child(step: str, args: list[str]) -> None:
    import polars as pl

    start, cpu = time.perf_counter(), time.process_time()
    if step == "baseline":
        frame = pl.read_csv(args[0], separator="\t", has_header=False)
        report: dict[str, Any] = {"rows": frame.height}
    else:
        from plexus.pipelines.ingest import DataConfig, DataFormat, ingest

        config = DataConfig(format=DataFormat.CRITEO, path=args[0], workers=int(args[2]))
        result = ingest(config, output=Path(args[1]), progress=False)
        report = {
            "rows": sum(result.rows.values()),
            "skipped": result.skipped,
            "splits": result.rows,
            "features": len(result.spec.features),
        }
    report["seconds"] = time.perf_counter() - start
    report["cpu_seconds"] = time.process_time() - cpu
    if step != "baseline" and int(args[2]) > 0:
        import ray

        ray.shutdown()
    # VmHWM, not ru_maxrss: Linux carries the forking parent's peak into ru_maxrss across exec.
    with open("/proc/self/status") as fh:
        hwm = next(line for line in fh if line.startswith("VmHWM:"))
    report["maxrss_bytes"] = int(hwm.split()[1]) * 1024
    print(json.dumps(report), flush=True)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        _run_child(sys.argv[2], sys.argv[3:])
        return
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workers", type=int, default=0, help="Ray tasks (0: threads)")
    args = parser.parse_args()
    bench_ingest(
        args.out_dir, rows=args.rows, seed=args.seed, repeats=args.repeats, workers=args.workers
    )


if __name__ == "__main__":
    main()
