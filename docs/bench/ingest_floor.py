"""How close any ingest of this kind can come to a bare parse (README, "The floor under the
ingest ratio"): times, on one synthetic Criteo file and in the same process, alternating rounds,

1. the bare parse of `plexus bench ingest` (`polars.read_csv`, types inferred);
2. the same parse plus the one hash pass per categorical value that counting and encoding need
   (each column cast to a polars Categorical: dense UInt32 codes, what the ingest's run codes do);
3. (2) plus one zstd Parquet write of the coded frame (the shards' format, no splits);
4. the full ingest (`plexus.pipelines.ingest.ingest`: rejects, splits, the ranked vocabulary,
   a spill between its passes, the fingerprint, shards of int64 ids).

Each is the fastest of `--rounds`; the ratios are rows/s against (1), as the benchmark's.

usage: .venv/bin/python docs/bench/ingest_floor.py [--rows 1000000] [--rounds 3] [--out DIR]
"""

import argparse
import shutil
import time
import uuid
from pathlib import Path

import polars as pl
from plexus.pipelines.data.synth import synth_criteo
from plexus.pipelines.ingest import DataConfig, DataFormat, ingest

NAMES = ["label"] + [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)]


def bare(source: Path, out: Path) -> None:
    pl.read_csv(source, separator="\t", has_header=False)


def coded(source: Path, out: Path, write: bool = False) -> None:
    namespace = uuid.uuid4().hex
    frame = pl.read_csv(
        source, separator="\t", has_header=False, new_columns=NAMES, quote_char=None
    )
    frame = frame.with_columns(
        pl.col(c).cast(pl.Categorical(pl.Categories(c, namespace=namespace))).to_physical()
        for c in NAMES
        if c.startswith("C")
    )
    if write:
        frame.write_parquet(out / "coded.parquet", compression="zstd")


def full(source: Path, out: Path) -> None:
    shutil.rmtree(out / "ingest", ignore_errors=True)
    ingest(DataConfig(format=DataFormat.CRITEO, path=str(source)), output=out / "ingest",
           progress=False)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/ingest-floor"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    source = args.out / f"criteo-{args.rows}-0.txt"
    if not source.is_file():
        synth_criteo(source, rows=args.rows, seed=0)
    steps = {
        "bare polars.read_csv": bare,
        "parse + codes": coded,
        "parse + codes + one Parquet write": lambda s, o: coded(s, o, write=True),
        "plexus ingest (full)": full,
    }
    best = {name: float("inf") for name in steps}
    for r in range(args.rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            step(source, args.out)
            best[name] = min(best[name], time.perf_counter() - start)
        print(f"round {r + 1}: " + ", ".join(f"{n} {best[n]:.2f} s" for n in steps), flush=True)
    base = best["bare polars.read_csv"]
    for name, seconds in best.items():
        print(f"{name:36s} {seconds:6.2f} s   ratio {base / seconds:.2f}")


if __name__ == "__main__":
    main()
