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


def split_logits(model_folder, data, spec):
    """Labels and the model's logits on the validation and test rows."""
    model, job = load_model(model_folder)
    if FeatureSpec.load(model_folder).fingerprint != spec.fingerprint:
        raise PlexusError(f"{model_folder} was trained on another ingest than {data}")
    out = {}
    for split in ("valid", "test"):
        shards = sorted((data / split).glob("*.parquet"))
        batches = iter_batches(shards, spec, job.train.eval_batch_size)
        labels, probabilities = predict(model, batches)
        p = np.clip(probabilities.astype(np.float64), 1e-7, 1 - 1e-7)
        out[split] = labels, np.log(p / (1 - p))
    return out


def main():
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    data = Path(sys.argv[1])
    spec = FeatureSpec.load(data)
    scored = {folder: split_logits(folder, data, spec) for folder in sys.argv[2:]}
    result = {}
    for folder, splits in scored.items():
        result[folder] = {f"{split}_auc": auc(*splits[split]) for split in splits}
    result["mean of the models"] = {}
    for split in ("valid", "test"):
        labels = next(iter(scored.values()))[split][0]
        mean = np.mean([splits[split][1] for splits in scored.values()], axis=0)
        result["mean of the models"][f"{split}_auc"] = auc(labels, mean)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
