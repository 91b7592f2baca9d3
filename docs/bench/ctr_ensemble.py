"""The validation and test AUC of trained CTR models alone and of their mean prediction: how
much of a recipe's gap is one model's variance. Averages the logits (the mean of the models'
log-odds); every model must come from the same ingest (feature spec), as `plexus evaluate`
checks. A record of the issue-12 measurement on MovieLens-1M; run from a folder with runs:
    .venv/bin/python docs/bench/ctr_ensemble.py DATA_FOLDER MODEL_FOLDER [MODEL_FOLDER ...]
(DATA_FOLDER: the ingest's folder, `runs/data/<name>-<hash>`; MODEL_FOLDER: a run's `model/`)
"""

import json
import sys
from pathlib import Path

import numpy as np
from plexus.pipelines.train.evaluate import iter_batches, predict
from plexus.pipelines.train.job import load_model
from plexus.pipelines.train.metrics import auc
from plexus.platform.errors import PlexusError
from plexus.platform.feature_spec import FeatureSpec


def logits(model_folder, data, spec, split):
    model, job = load_model(model_folder)
    if FeatureSpec.load(model_folder).fingerprint != spec.fingerprint:
        raise PlexusError(f"{model_folder} was trained on another ingest than {data}")
    shards = sorted((data / split).glob("*.parquet"))
    labels, probabilities = predict(model, iter_batches(shards, spec, job.train.eval_batch_size))
    p = np.clip(probabilities.astype(np.float64), 1e-7, 1 - 1e-7)
    return labels, np.log(p / (1 - p))


def main():
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    data = Path(sys.argv[1])
    spec = FeatureSpec.load(data)
    models = sys.argv[2:]
    result = {}
    for split in ("valid", "test"):
        scores = []
        for folder in models:
            labels, score = logits(folder, data, spec, split)
            scores.append(score)
            result.setdefault(folder, {})[f"{split}_auc"] = auc(labels, score)
        result.setdefault("mean of the models", {})[f"{split}_auc"] = auc(
            labels, np.mean(scores, 0)
        )
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
