"""Gowalla epoch time: the towers on plain nn.Embedding (before, commit 24fb8ca, read from git
history into runs/pipeline/old_two_tower.py) against the towers on EmbeddingTables (now), on the
same batches and negatives, interleaved in blocks of steps so that a moving machine load hits
both alike. A record of the issue-16 measurement; run from the repository root:
    nice .venv/bin/python docs/bench/retrieval_epoch_compare.py [steps or 0 = one epoch] [method ...]
"""

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from plexus.models.embeddings import EmbeddingConfig, protocol
from plexus.models.retrieval import LossKind, TwoTowerConfig, retrieval_loss
from plexus.models.retrieval.sparse import retrieval_optimizers, sparse_lookups
from plexus.models.retrieval.two_tower import TwoTower
from plexus.pipelines.ingest import DataConfig
from plexus.pipelines.retrieval.data import ingest_interactions
from plexus.pipelines.retrieval.evaluate import evaluate_tower
from plexus.platform.config import from_dict

OLD = Path("runs/pipeline/old_two_tower.py")
BATCH, NEGATIVES, LR, BLOCK = 1024, 4096, 0.005, 25
CONFIG = TwoTowerConfig(dim=256, history_len=20, user_weight=0.5, history_grad=False)
METHODS = {
    "full": EmbeddingConfig(dim=256),
    "hashing": EmbeddingConfig(method="hashing", dim=256, budget=0.25),
    "multiplexed": EmbeddingConfig(method="multiplexed", dim=256, budget=0.25),
    "unified": EmbeddingConfig(method="unified", dim=128, budget=0.5, chunks=2),
}


def old_module():
    """The two-tower module as it was before the shared tables, from git history."""
    OLD.parent.mkdir(parents=True, exist_ok=True)
    source = ["git", "show", "24fb8ca:models/plexus/models/retrieval/two_tower.py"]
    OLD.write_bytes(subprocess.run(source, check=True, capture_output=True).stdout)
    spec = importlib.util.spec_from_file_location("old_two_tower", OLD)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def old_setup(old, data):
    torch.manual_seed(0)
    model = old.TwoTower(CONFIG, num_users=data.num_users, num_items=data.num_items)
    weights = [model.user_embedding.weight, model.item_embedding.weight]
    return model, [torch.optim.SparseAdam(weights, lr=LR)], None


def new_setup(method, data):
    torch.manual_seed(0)
    model = TwoTower(
        CONFIG, num_users=data.num_users, num_items=data.num_items, embedding=METHODS[method]
    )
    lookups = sparse_lookups()
    with lookups, torch.no_grad():  # one call builds the tables' lazy parts
        one = torch.ones(1, 1, dtype=torch.int64)
        model.user_vectors(one[0], one, one.float())
        model.item_vectors(one[0])
    return model, retrieval_optimizers(model, lookups, lr=LR), lookups


def train_step(batch, model, optimizers, lookups, step):
    users, items, histories, order, num_items = batch
    idx = order[step * BATCH : (step + 1) * BATCH]
    user, pos = torch.from_numpy(users[idx]), torch.from_numpy(items[idx])
    hist = histories[user]
    mask = ((hist > 0) & (hist != pos.unsqueeze(1))).float()
    draws = torch.Generator().manual_seed(step)
    neg = torch.randint(1, num_items + 1, (NEGATIVES,), generator=draws)
    with lookups if lookups is not None else torch.enable_grad():
        loss = retrieval_loss(
            LossKind.COSINE_CONTRASTIVE,
            model.user_vectors(user, hist, mask),
            model.item_vectors(pos),
            model.item_vectors(neg),
            margin=0.9,
            negative_weight=150.0,
            temperature=0.07,
        )
        if lookups is not None and (extra := protocol.extra_loss(model)) is not None:
            loss = loss + extra
    for optimizer in optimizers:
        optimizer.zero_grad()
    loss.backward()
    for optimizer in optimizers:
        optimizer.step()
    if lookups is not None:
        protocol.after_step(model, optimizers)
    return float(loss.detach())


def compare(method, old, data, batch, steps, epoch_steps):
    runs = {
        "before (nn.Embedding)": old_setup(old, data),
        f"now ({method})": new_setup(method, data),
    }
    totals = dict.fromkeys(runs, 0.0)
    losses = {name: [] for name in runs}
    ratios = []
    for lo in range(0, steps, BLOCK):
        block = {}
        for name, (model, optimizers, lookups) in runs.items():
            start = time.perf_counter()
            for step in range(lo, min(lo + BLOCK, steps)):
                losses[name].append(train_step(batch, model, optimizers, lookups, step))
            block[name] = time.perf_counter() - start
            totals[name] += block[name]
        before, now = block.values()
        ratios.append(before / now)
    names = list(runs)
    return {
        "steps": steps,
        "epoch_seconds": {k: v * epoch_steps / steps for k, v in totals.items()},
        "speed_ratio_now_vs_before": totals[names[0]] / totals[names[1]],
        "block_ratio_median": float(np.median(ratios)),
        "mean_loss": {k: float(np.mean(v)) for k, v in losses.items()},
        "after_the_epoch": {
            k: evaluate_tower(model.eval(), data, ks=(20,)) for k, (model, _, _) in runs.items()
        },
    }


def main():
    torch.set_num_threads(1)
    steps_wanted = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    methods = sys.argv[2:] or ["full"]
    root = Path(os.environ.get("PLEXUS_DATA", "../shared/data"))
    data_config = from_dict(DataConfig, {"format": "lightgcn", "path": str(root / "gowalla")})
    _, data = ingest_interactions(data_config, Path("runs/pipeline/ingest/gowalla"), progress=False)
    users = np.repeat(np.arange(data.num_users + 1), np.diff(data.train_indptr))
    order = np.random.default_rng(0).permutation(users.size)
    histories = torch.from_numpy(data.model_histories(CONFIG))
    batch = (users, data.train_items, histories, order, data.num_items)
    epoch_steps = -(-users.size // BATCH)
    steps = steps_wanted or epoch_steps
    old = old_module()
    results = {}
    for method in methods:
        results[method] = compare(method, old, data, batch, steps, epoch_steps)
        print(method, json.dumps(results[method]), flush=True)
    Path("runs/pipeline/bench_epoch.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
