"""The search-space YAML of `plexus tune`: which job-config keys to search, and how.

Example (`pipelines/configs/spaces/movielens.yaml`):

    trials: 8                      # sampled configurations (`--trials` overrides)
    seed: 0                        # of the random search
    repeats: 1                     # training seeds per configuration, ranked by their mean
    folds: 1                       # cross-validation folds per configuration (data.split.folds)
    cpus_per_trial: 1              # Ray resources (and torch threads) of one trial
    scheduler: {grace_period: 1, reduction_factor: 2}   # ASHA, on validation AUC per epoch
    space:
      train.lr: {loguniform: [0.0003, 0.03]}
      train.weight_decay: {choice: [0.0, 0.000001, 0.00001]}
      model.hidden: {choice: [[200, 200], [400, 400]]}
      embedding.dim: {grid: [8, 16]}           # every trial sample is run for each value

A key is any job-config key (`section.key`, as on the command line); each is given one of
`choice: [values]`, `grid: [values]`, `uniform: [low, high]`, `loguniform: [low, high]`,
`randint: [low, high]` (high excluded).

`repeats: N` trains every sampled configuration N times, with `train.seed` = the job's seed + 0
.. N-1, and ranks configurations by their mean validation AUC. On small data the seed alone moves
validation AUC as much as the recipes differ (the Criteo sample: +-0.013 for DeepFM), and a
search over single runs then picks the luckiest seed, not the best recipe.

`folds: K` (K >= 2) also trains every configuration on each of K cross-validation folds
(`data.split.folds: K`, `data.split.fold` = 0 .. K-1: the rows that are not test, a given
validation file's included, cut into K seeded folds, one of them validation) and ranks by the
mean over folds and seeds. A small validation file (the Criteo sample's has 409 rows, one
standard error of AUC about 0.03) ranks recipes on noise; K folds validate on every non-test
row. The test split is the same in every fold, and `best.yaml` keeps the job's own split.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import yaml
from plexus.platform.errors import ConfigError

KINDS = ("choice", "grid", "uniform", "loguniform", "randint")
SEED_KEY = "train.seed"  # the key `repeats` varies
FOLD_KEY = "data.split.fold"  # the key `folds` varies
FOLDS_KEY = "data.split.folds"  # set to `folds` in every trial
RUN_KEYS = (SEED_KEY, FOLD_KEY, FOLDS_KEY)  # what tells apart the runs of one configuration


@dataclasses.dataclass(frozen=True, kw_only=True)
class Param:
    """One searched key: its distribution `kind` and `values` (the choices, or [low, high])."""

    key: str
    kind: str
    values: tuple[Any, ...]

    def __post_init__(self) -> None:
        where = f"space.{self.key}"
        if self.kind not in KINDS:
            raise ConfigError(f"{where}: unknown kind {self.kind!r}; one of {', '.join(KINDS)}")
        if self.kind in ("choice", "grid"):
            if not self.values:
                raise ConfigError(f"{where}: {self.kind} needs a non-empty list of values")
            return
        if len(self.values) != 2 or not all(isinstance(v, int | float) for v in self.values):
            raise ConfigError(f"{where}: {self.kind} needs [low, high], got {list(self.values)}")
        low, high = self.values
        if not low < high:
            raise ConfigError(f"{where}: {self.kind} needs low < high, got {list(self.values)}")
        if self.kind == "loguniform" and low <= 0:
            raise ConfigError(f"{where}: loguniform needs low > 0, got {low}")
        if self.kind == "randint" and not all(isinstance(v, int) for v in self.values):
            raise ConfigError(f"{where}: randint needs integer bounds, got {list(self.values)}")

    def domain(self) -> Any:
        """The Ray Tune domain of this parameter."""
        from ray import tune

        if self.kind == "choice":
            return tune.choice(list(self.values))
        if self.kind == "grid":
            return tune.grid_search(list(self.values))
        low, high = self.values
        return {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}[
            self.kind
        ](low, high)

    def examples(self) -> list[Any]:
        """Values that span the domain, for checking the key against the job config up front."""
        if self.kind in ("choice", "grid"):
            return list(self.values)
        low, high = self.values
        if self.kind == "randint":
            return [low, high - 1]
        if self.kind == "loguniform":
            return [low, math.sqrt(low * high), high]
        return [low, high]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Scheduler:
    """ASHA (Li et al., 2020) on validation AUC, one rung step per epoch."""

    grace_period: int = 1  # epochs every trial gets before it can be stopped
    reduction_factor: float = 2.0  # 1/reduction_factor of the trials go on at each rung

    def __post_init__(self) -> None:
        if self.grace_period < 1:
            raise ConfigError(f"scheduler.grace_period must be >= 1, got {self.grace_period}")
        if self.reduction_factor <= 1:
            raise ConfigError(
                f"scheduler.reduction_factor must be > 1, got {self.reduction_factor}"
            )


@dataclasses.dataclass(frozen=True, kw_only=True)
class TuneSpace:
    """A parsed search-space file (see the module docstring)."""

    params: tuple[Param, ...]
    trials: int = 8
    seed: int = 0
    repeats: int = 1
    folds: int = 1
    cpus_per_trial: int = 1
    scheduler: Scheduler = Scheduler()

    def __post_init__(self) -> None:
        if not self.params:
            raise ConfigError("space: give at least one key to search, e.g. train.lr")
        if self.trials < 1:
            raise ConfigError(f"trials must be >= 1, got {self.trials}")
        if self.repeats < 1:
            raise ConfigError(f"repeats must be >= 1, got {self.repeats}")
        if self.repeats > 1 and any(p.key == SEED_KEY for p in self.params):
            raise ConfigError(
                f"space.{SEED_KEY}: searched and repeated at once; give either `repeats: N` "
                f"or a {SEED_KEY} distribution, not both"
            )
        if self.folds < 1:
            raise ConfigError(f"folds must be >= 1 (1: the job's own split), got {self.folds}")
        if self.cpus_per_trial < 1:
            raise ConfigError(f"cpus_per_trial must be >= 1, got {self.cpus_per_trial}")

    def param_space(self, job_seed: int = 0) -> dict[str, Any]:
        """The Ray Tune `param_space`: one flat entry per searched job-config key, plus grids
        over `train.seed` (repeats) and `data.split.fold` (folds): each sample runs them all."""
        from ray import tune

        space: dict[str, Any] = {p.key: p.domain() for p in self.params}
        if self.repeats > 1:
            space[SEED_KEY] = tune.grid_search([job_seed + i for i in range(self.repeats)])
        if self.folds > 1:
            space[FOLDS_KEY] = self.folds
            space[FOLD_KEY] = tune.grid_search(list(range(self.folds)))
        return space

    @property
    def runs_per_configuration(self) -> int:
        return self.repeats * self.folds

    def to_dict(self) -> dict[str, Any]:
        data = {
            "trials": self.trials,
            "seed": self.seed,
            "cpus_per_trial": self.cpus_per_trial,
            "scheduler": dataclasses.asdict(self.scheduler),
            "space": {p.key: {p.kind: list(p.values)} for p in self.params},
        }
        if self.repeats > 1:  # absent at 1: the folder hash of earlier tunings is unchanged
            data["repeats"] = self.repeats
        if self.folds > 1:
            data["folds"] = self.folds
        return data


def parse_space(data: dict[str, Any], *, where: str = "space file") -> TuneSpace:
    """A `TuneSpace` from the YAML mapping; errors name the file and the key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: top level must be a mapping with a `space:` section")
    known = {"trials", "seed", "repeats", "folds", "cpus_per_trial", "scheduler", "space"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; valid: {', '.join(sorted(known))}")
    space = data.get("space")
    if not isinstance(space, dict) or not space:
        raise ConfigError(f"{where}: `space:` must map job-config keys to distributions")
    params = []
    for key, spec in space.items():
        if not isinstance(spec, dict) or len(spec) != 1:
            raise ConfigError(
                f"{where}: space.{key} must be one of {{{', '.join(KINDS)}}}: [values], "
                f"e.g. {{loguniform: [0.0001, 0.01]}}; got {spec!r}"
            )
        ((kind, values),) = spec.items()
        if not isinstance(values, list):
            raise ConfigError(f"{where}: space.{key}.{kind} must be a list, got {values!r}")
        params.append(Param(key=str(key), kind=kind, values=tuple(values)))
    scheduler = data.get("scheduler") or {}
    try:
        return TuneSpace(
            params=tuple(params),
            trials=int(data.get("trials", 8)),
            seed=int(data.get("seed", 0)),
            repeats=int(data.get("repeats", 1)),
            folds=int(data.get("folds", 1)),
            cpus_per_trial=int(data.get("cpus_per_trial", 1)),
            scheduler=Scheduler(**scheduler),
        )
    except TypeError as exc:
        raise ConfigError(
            f"{where}: scheduler: {exc} (valid: grace_period, reduction_factor)"
        ) from exc


def load_space(path: str | Path) -> TuneSpace:
    """Read and validate a search-space YAML."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"search-space file not found: {file}")
    try:
        data = yaml.safe_load(file.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file}: not valid YAML: {exc}") from exc
    return parse_space(data, where=str(file))
