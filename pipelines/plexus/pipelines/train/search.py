"""Fitness of search candidates on Ray: validation AUC of the searched model, in parallel.

A search stage (OptEmbed's evolutionary search) asks for the fitness of a batch of candidates
at a time. Each evaluation is independent, so `RayFitness` keeps a pool of Ray actors, each
holding one copy of the model (its weights put in the object store once) and the validation
batches, and maps the candidates over them. Every actor uses one torch thread, so `workers`
actors use `workers` cores and one actor is the one-at-a-time baseline.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch
from plexus.models.backbones import build_ctr_model
from plexus.models.embeddings import protocol
from plexus.models.threads import use_cpu_threads
from plexus.pipelines.config import JobConfig
from plexus.pipelines.ingest import IngestResult
from plexus.pipelines.train.evaluate import evaluate, iter_batches
from plexus.platform.feature_spec import FeatureSpec


class _FitnessWorker:
    """One model copy and the validation batches; `fitness(candidate)` -> validation AUC."""

    def __init__(
        self, job: JobConfig, spec_path: str, state: dict, shards: list[str], batch_size: int
    ) -> None:
        use_cpu_threads(1)
        spec = FeatureSpec.load(spec_path)
        self.model = build_ctr_model(job.model, job.embedding, spec)
        self.model.load_state_dict(state)
        self.model.eval()
        self.batches = list(iter_batches([Path(s) for s in shards], spec, batch_size))

    def fitness(self, candidate: Any) -> float:
        protocol.apply_candidate(self.model, candidate)
        return evaluate(self.model, self.batches)["auc"]


class RayFitness:
    """`evaluate(candidates) -> [validation AUC]` for `protocol.search`, over `workers` actors
    (0: one per core). The model's state is snapshotted at the first call, after the search
    has prepared it (e.g. frozen OptEmbed's row masks)."""

    def __init__(
        self, job: JobConfig, data: IngestResult, model: torch.nn.Module, *, workers: int = 0
    ) -> None:
        self._job, self._data, self._model = job, data, model
        self.workers = workers or os.cpu_count() or 1
        self._actors: list[Any] = []
        self.evaluations = 0
        self.seconds = 0.0

    def __call__(self, candidates: list[Any]) -> list[float]:
        from ray.util import ActorPool

        started = time.perf_counter()
        if not self._actors:
            self._start()
        pool = ActorPool(self._actors)
        scores = list(pool.map(lambda actor, c: actor.fitness.remote(c), candidates))
        self.evaluations += len(candidates)
        self.seconds += time.perf_counter() - started
        return [float(s) for s in scores]

    def _start(self) -> None:
        import ray
        from plexus.pipelines.runtime import ensure_ray

        ensure_ray()
        state = ray.put({k: v.detach().clone() for k, v in self._model.state_dict().items()})
        worker = ray.remote(num_cpus=1)(_FitnessWorker)
        shards = [str(p) for p in self._data.shards("valid")]
        spec_path = str(self._data.output / "feature_spec.json")
        batch = self._job.train.eval_batch_size
        self._actors = [
            worker.remote(self._job, spec_path, state, shards, batch) for _ in range(self.workers)
        ]

    def close(self) -> None:
        import ray

        for actor in self._actors:
            ray.kill(actor)
        self._actors = []
