"""Benchmarks of the Plexus pipelines (ingest throughput, ...); each writes a results.json."""
