"""`plexus tune`: hyper-parameter search on Ray Tune over the training job (see `job.py`)."""

from plexus.pipelines.tune.job import TuneResult, tune
from plexus.pipelines.tune.space import TuneSpace, load_space, parse_space

__all__ = ["TuneResult", "TuneSpace", "load_space", "parse_space", "tune"]
