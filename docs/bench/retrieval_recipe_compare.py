"""Evidence for the retrieval recipe (README, "Gowalla at the published width"): train a job
config on its validation task (the training lists minus the ingest's hold-out of one item per
user) and print, every few epochs, Recall@20 / NDCG@20 on that hold-out (what a setting is
chosen by) and on the real test lists (what is reported).

usage: PLEXUS_DATA=../shared/data .venv/bin/python docs/bench/retrieval_recipe_compare.py \\
           CONFIG TAG [every=N] [key=value ...]
e.g.   ... pipelines/plexus/pipelines/configs/retrieval_gowalla.yaml d64 model.dim=64 every=10

One line per epoch, `[TAG] {json}`; the last one is the run's result. The test figures of a
model trained without the hold-out are a little below those of the same recipe on the whole
training split (`plexus run`), and comparable between recipes.
"""

import json
import sys
import time

from plexus.pipelines.retrieval.config import load_retrieval_config
from plexus.pipelines.retrieval.evaluate import evaluate_tower
from plexus.pipelines.retrieval.job import load_data
from plexus.pipelines.retrieval.train import train_two_tower

config_path, tag, *args = sys.argv[1:]
every = int(next((a.split("=", 1)[1] for a in args if a.startswith("every=")), 5))
overrides = [a for a in args if not a.startswith("every=")]
config = load_retrieval_config(config_path, ["use_ray=false", *overrides])
data = load_data(config)
valid = data.validation()
start = time.perf_counter()


def on_epoch(record: dict[str, float], model) -> None:
    epoch = int(record["epoch"])
    if epoch % every == 0 or epoch == config.train.epochs:
        for prefix, task in (("valid", valid), ("test", data)):
            scores = evaluate_tower(model, task, ks=(20,))
            record[f"{prefix}_recall@20"] = scores["recall@20"]
            record[f"{prefix}_ndcg@20"] = scores["ndcg@20"]
        model.train()
    print(f"[{tag}] " + json.dumps({k: round(v, 4) for k, v in record.items()}), flush=True)


train_two_tower(valid, config.model, config.train, on_epoch=on_epoch, embedding=config.embedding)
print(f"[{tag}] done in {time.perf_counter() - start:.0f} s", flush=True)
