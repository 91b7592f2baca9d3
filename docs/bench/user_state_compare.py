"""Evidence for the user-state defaults (README, "A bundle that scales with users"): quality of
the compact mixture store (top M, log8 / float16) for known users and of the new-user reference
index (a sample of R users) against the dense computation, on one trained retrieval model.

usage: nice -n 10 .venv/bin/python docs/bench/user_state_compare.py CONFIG RUN_FOLDER [key=value ...]
(RUN_FOLDER: a `plexus run` output folder holding model.pt; SHORT=1 runs fewer settings).
Writes /tmp/scale/eval_<name>.json and prints one line per setting."""

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from plexus.pipelines.retrieval.compare import compare_retrieval, fit_knn_embed_query
from plexus.pipelines.retrieval.config import load_retrieval_config
from plexus.pipelines.retrieval.evaluate import csr_rows, diversity, ranking_metrics, test_users
from plexus.pipelines.retrieval.job import load_data, load_model
from plexus.pipelines.retrieval.user_state import build_user_state
from plexus.serving import index as item_index
from plexus.serving.bundle import search_mixture
from plexus.serving.user_state import UserStateConfig, WeightDtype

torch.set_num_threads(1)
config = load_retrieval_config(sys.argv[1], sys.argv[3:])
data = load_data(config)
model, _ = load_model(Path(sys.argv[2]), data)
module, state = fit_knn_embed_query(model, data, config.knn_embed)
C = int(state.centroids.shape[0])
U = data.num_users
alloc = config.export.allocation
out = {"users": U, "clusters": C}

# 1. Known users: the stored mixtures at several M against exact (all clusters, float32).
known = {}

KNOWN = [
    (C, [WeightDtype.FLOAT32, WeightDtype.LOG8]),
    (24, [WeightDtype.LOG8, WeightDtype.FLOAT16]),
    (16, [WeightDtype.LOG8, WeightDtype.FLOAT16]),
    (8, [WeightDtype.FLOAT16]),
]
if os.environ.get("SHORT"):
    KNOWN = [(C, [WeightDtype.FLOAT32]), (24, [WeightDtype.LOG8])]
for m, dtypes in KNOWN:
    for dtype in dtypes:
        cfg = UserStateConfig(top_clusters=m, weight_dtype=dtype, reference_users=1)
        t = time.perf_counter()
        users = build_user_state(module, state, data, cfg)
        rows = compare_retrieval(
            module, state, data, ks=config.eval.ks, allocation=alloc, users=users
        )
        key = f"M={m},{dtype.value}"
        known[key] = {
            f"{r['method']}@{r['k']}": {
                x: round(r[x], 4)
                for x in ("recall", "ndcg", "distinct_clusters", "intra_list_distance")
            }
            for r in rows
        }
        print(
            key,
            f"{time.perf_counter() - t:.1f}s",
            {k: v for k, v in known[key].items() if k.startswith("knn")},
            flush=True,
        )
out["known"] = known

# 2. New users: each test user's stored history sent without an id, smoothed through an index
# over R sampled users, against the dense computation over all users.
items = module.model.all_item_vectors().detach()
item_np = items.numpy()
clusters = state.item_clusters.numpy()
index = item_index.build_cluster_index(
    item_np[1:], clusters[1:], state.centroids.numpy(), np.arange(1, data.num_items + 1)
)
tested = test_users(data)
hist = torch.from_numpy(data.model_histories(module.model.config)[tested])
zeros = torch.zeros(tested.size, dtype=torch.long)
with torch.no_grad():
    query, own, comps = module(zeros, hist, (hist > 0).float())
dense_mix = torch.cat(
    [
        module.smoothed_mixture(zeros[i : i + 2048], query[i : i + 2048], own[i : i + 2048], state)
        for i in range(0, tested.size, 2048)
    ]
).numpy()
excluded = csr_rows(data.train_indptr, data.train_items, tested)


def candidates(mix, k):
    res = []
    for lo in range(0, tested.size, 1024):
        sel = slice(lo, lo + 1024)
        ex_rows = excluded[0]
        m = (ex_rows >= lo) & (ex_rows < lo + 1024)
        ids, _ = search_mixture(
            index,
            clusters,
            mix[sel],
            comps.numpy()[sel],
            k,
            (ex_rows[m] - lo, excluded[1][m]),
            alloc,
        )
        res.append(ids)
    return np.concatenate(res)


K = max(config.eval.ks)
dense_top = candidates(dense_mix, K)


def quality(top, k):
    r = ranking_metrics(top, data, tested, (k,))
    d = diversity(top, item_np, clusters, k)
    return round(float(r[f"recall@{k}"].mean()), 4), round(float(d["distinct_clusters"].mean()), 2)


new = {"dense": {k: quality(dense_top, k) for k in config.eval.ks}}
print("new dense", new["dense"], flush=True)
sizes = sorted({U, U // 4, 5000, 1000} - {0}, reverse=True)
for m in (24,) if os.environ.get("SHORT") else (C, 24):
    for R in sizes:
        if R > U:
            continue
        cfg = UserStateConfig(
            top_clusters=m,
            weight_dtype=WeightDtype.LOG8 if m < C else WeightDtype.FLOAT32,
            reference_users=R,
        )
        users = build_user_state(module, state, data, cfg)
        mix = users.mixture(
            np.zeros(tested.size, np.int64), query.numpy(), own.numpy(), np.zeros(tested.size, bool)
        )
        l1 = float(np.abs(mix - dense_mix).sum(1).mean())
        top = candidates(mix, K)
        overlap = {
            k: round(
                float(
                    np.mean(
                        [
                            np.intersect1d(a[:k], b[:k]).size / k
                            for a, b in zip(top, dense_top, strict=True)
                        ]
                    )
                ),
                4,
            )
            for k in config.eval.ks
        }
        new[f"M={m},R={R}"] = {
            "mixture_l1": round(l1, 4),
            "overlap": overlap,
            "quality": {k: quality(top, k) for k in config.eval.ks},
            "reference_bytes": users.nbytes()["reference"],
        }
        print(f"M={m},R={R}", new[f"M={m},R={R}"], flush=True)
out["new"] = new
Path("/tmp/scale").mkdir(parents=True, exist_ok=True)
Path(f"/tmp/scale/eval_{config.name}.json").write_text(json.dumps(out, indent=1))
