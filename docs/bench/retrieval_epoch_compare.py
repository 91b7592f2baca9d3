"""Gowalla epoch time: the towers on plain nn.Embedding (before, commit 24fb8ca, read from git
history into runs/pipeline/old_two_tower.py) against the towers on EmbeddingTables (now), on the
same batches and negatives, interleaved in blocks of steps so that a moving machine load hits
both alike. A record of the issue-16 measurement; run from the repository root:
    nice .venv/bin/python docs/bench/retrieval_epoch_compare.py [steps or 0 = one epoch] [method ...]
"""
import importlib.util, json, os, subprocess, sys, time
from pathlib import Path
import numpy as np, torch
from plexus.models.embeddings import EmbeddingConfig, protocol
from plexus.models.retrieval import TwoTowerConfig, retrieval_loss, LossKind
from plexus.models.retrieval.sparse import retrieval_optimizers, sparse_lookups
from plexus.models.retrieval.two_tower import TwoTower
from plexus.pipelines.ingest import DataConfig
from plexus.pipelines.retrieval.data import ingest_interactions
from plexus.platform.config import from_dict

OLD = Path("runs/pipeline/old_two_tower.py")
OLD.parent.mkdir(parents=True, exist_ok=True)
OLD.write_bytes(subprocess.run(["git", "show", "24fb8ca:models/plexus/models/retrieval/two_tower.py"],
                               check=True, capture_output=True).stdout)
spec = importlib.util.spec_from_file_location("old_two_tower", OLD)
old_mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(old_mod)
torch.set_num_threads(1)
steps_wanted = int(sys.argv[1]) if len(sys.argv) > 1 else 0
methods = sys.argv[2:] or ["full"]
cfg = TwoTowerConfig(dim=256, history_len=20, user_weight=0.5, history_grad=False)
_, data = ingest_interactions(from_dict(DataConfig, {"format": "lightgcn", "path": str(Path(os.environ.get("PLEXUS_DATA", "../shared/data")) / "gowalla")}),
                              Path("runs/pipeline/ingest/gowalla"), progress=False)
hist_all = torch.from_numpy(data.model_histories(cfg))
users = np.repeat(np.arange(data.num_users + 1), np.diff(data.train_indptr)); items = data.train_items
B, M, LR = 1024, 4096, 0.005
rng = np.random.default_rng(0); order = rng.permutation(users.size)
steps = -(-users.size // B) if steps_wanted == 0 else steps_wanted

def old_setup():
    torch.manual_seed(0)
    m = old_mod.TwoTower(cfg, num_users=data.num_users, num_items=data.num_items)
    return m, [torch.optim.SparseAdam([m.user_embedding.weight, m.item_embedding.weight], lr=LR)], None

def new_setup(method):
    torch.manual_seed(0)
    emb = {"full": EmbeddingConfig(dim=256),
           "hashing": EmbeddingConfig(method="hashing", dim=256, budget=0.25),
           "multiplexed": EmbeddingConfig(method="multiplexed", dim=256, budget=0.25),
           "unified": EmbeddingConfig(method="unified", dim=128, budget=0.5, chunks=2)}[method]
    m = TwoTower(cfg, num_users=data.num_users, num_items=data.num_items, embedding=emb)
    lk = sparse_lookups()
    with lk, torch.no_grad():
        one = torch.ones(1, 1, dtype=torch.int64); m.user_vectors(one[0], one, one.float()); m.item_vectors(one[0])
    return m, retrieval_optimizers(m, lk, lr=LR), lk

def step(model, opts, lk, s):
    idx = order[s * B:(s + 1) * B]
    u = torch.from_numpy(users[idx]); pos = torch.from_numpy(items[idx]); hist = hist_all[u]
    mask = ((hist > 0) & (hist != pos.unsqueeze(1))).float()
    g = torch.Generator().manual_seed(s); neg = torch.randint(1, data.num_items + 1, (M,), generator=g)
    ctx = lk if lk is not None else torch.autograd.grad_mode.set_grad_enabled(True)
    with ctx:
        loss = retrieval_loss(LossKind.COSINE_CONTRASTIVE, model.user_vectors(u, hist, mask), model.item_vectors(pos),
                              model.item_vectors(neg), margin=0.9, negative_weight=150.0, temperature=0.07)
        if lk is not None and (extra := protocol.extra_loss(model)) is not None:
            loss = loss + extra
    for o in opts: o.zero_grad()
    loss.backward()
    for o in opts: o.step()
    if lk is not None: protocol.after_step(model, opts)
    return float(loss.detach())

results = {}
for method in methods:
    runs = {"before (nn.Embedding)": old_setup(), f"now ({method})": new_setup(method)}
    totals = {k: 0.0 for k in runs}; losses = {k: [] for k in runs}; ratios = []
    for lo in range(0, steps, 25):
        block = {}
        for name, (m, o, lk) in runs.items():
            t = time.perf_counter()
            for s in range(lo, min(lo + 25, steps)): losses[name].append(step(m, o, lk, s))
            block[name] = time.perf_counter() - t; totals[name] += block[name]
        a, b = block.values(); ratios.append(a / b)
    names = list(runs)
    from plexus.pipelines.retrieval.evaluate import evaluate_tower
    recall = {k: evaluate_tower(m.eval(), data, ks=(20,)) for k, (m, _, _) in runs.items()}
    row = {"steps": steps, "epoch_seconds": {k: v * (-(-users.size // B)) / steps for k, v in totals.items()},
           "speed_ratio_now_vs_before": totals[names[0]] / totals[names[1]],
           "block_ratio_median": float(np.median(ratios)),
           "mean_loss": {k: float(np.mean(v)) for k, v in losses.items()},
           "after_the_epoch": recall}
    results[method] = row
    print(method, json.dumps(row), flush=True)
Path("runs/pipeline/bench_epoch.json").write_text(json.dumps(results, indent=1))
