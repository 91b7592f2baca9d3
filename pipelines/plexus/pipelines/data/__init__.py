"""Datasets for tests and benchmarks: synthetic generators in the real files' layouts."""

from plexus.pipelines.data.synth import synth_criteo, synth_movielens

__all__ = ["synth_criteo", "synth_movielens"]
