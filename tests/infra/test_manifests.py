"""Every manifest under infra/ checked offline against a schema, plus what the schemas cannot see.

- compose files: the Compose Specification JSON schema (vendored by check-jsonschema);
- Kubernetes objects of the core API (CronJob, ConfigMap, RBAC, ...): kubernetes-validate's
  strict schemas (unknown fields rejected) for Kubernetes 1.33;
- KubeRay objects (RayCluster, RayJob, RayCronJob): the CRDs' openAPIV3Schema of KubeRay v1.6.2,
  `schemas/kuberay-1.6.2-<kind>.json.gz` (the `v1` version of
  ray-operator/config/crd/bases/ray.io_<kind>s.yaml at tag v1.6.2, as compact JSON), made strict
  here the way the API server's field validation is: an object with `properties` takes no
  other field unless the schema allows it;
- the daily job's `plexus` command parses with the real CLI and its config loads with its
  overrides; the RayJob in daily-cronjob.yaml equals daily-raycronjob.yaml's jobTemplate.
What no offline check covers is listed in infra/README.md.
"""

from __future__ import annotations

import copy
import gzip
import importlib.resources
import json
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
SCHEMAS = Path(__file__).parent / "schemas"
KUBERNETES = "1.33.0"
KUBERAY = {"RayCluster", "RayJob", "RayCronJob"}
MANIFESTS = sorted(p for p in INFRA.rglob("*.yaml") if p.is_file())
COMPOSE = [p for p in MANIFESTS if p.name.startswith("compose")]
K8S = [p for p in MANIFESTS if p not in COMPOSE]


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def strict(schema: Any) -> Any:
    """A copy of an openAPIV3Schema where every object with `properties` rejects other keys
    (unless it preserves unknown fields or declares `additionalProperties`)."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def kuberay_validator(kind: str) -> jsonschema.Draft4Validator:
    raw = json.loads(
        gzip.decompress((SCHEMAS / f"kuberay-1.6.2-{kind.lower()}.json.gz").read_bytes())
    )
    return jsonschema.Draft4Validator(strict(raw))


def validate_k8s(doc: dict[str, Any]) -> None:
    """Raise on a schema violation: KubeRay kinds against the CRD, others against Kubernetes."""
    if doc.get("kind") in KUBERAY:
        assert doc["apiVersion"] == "ray.io/v1"
        kuberay_validator(doc["kind"]).validate(doc)
    else:
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def compose_validator() -> jsonschema.protocols.Validator:
    """The Compose Specification's schema (JSON Schema 2020-12: `unevaluatedProperties` is what
    rejects unknown service keys, so the draft must be the schema's own)."""
    vendor = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    schema = json.loads((vendor / "compose-spec.json").read_text())
    return jsonschema.validators.validator_for(schema)(schema)


def embedded_rayjobs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """RayJob manifests kept as text in a ConfigMap (what the CronJob submits)."""
    if doc.get("kind") != "ConfigMap":
        return []
    found = [yaml.safe_load(text) for text in doc.get("data", {}).values()]
    return [d for d in found if isinstance(d, dict) and d.get("kind") == "RayJob"]


def test_every_manifest_is_covered() -> None:
    names = {p.relative_to(INFRA).as_posix() for p in MANIFESTS}
    assert {"compose.yaml", "compose.serve.yaml", "k8s/daily-raycronjob.yaml"} <= names
    assert {"k8s/daily-cronjob.yaml", "k8s/raycluster.yaml", "k8s/train-job.yaml"} <= names


@pytest.mark.parametrize("path", COMPOSE, ids=lambda p: p.name)
def test_compose_files_match_the_compose_spec(path: Path) -> None:
    compose_validator().validate(yaml.safe_load(path.read_text()))


@pytest.mark.parametrize("path", K8S, ids=lambda p: p.relative_to(INFRA).as_posix())
def test_kubernetes_manifests_match_their_schemas(path: Path) -> None:
    docs = documents(path)
    assert docs
    for doc in docs:
        validate_k8s(doc)
        for rayjob in embedded_rayjobs(doc):
            validate_k8s(rayjob)


def test_the_checks_reject_a_misspelled_field() -> None:
    """The schemas are strict enough to catch a typo at each level that matters."""
    cron = documents(INFRA / "k8s" / "daily-raycronjob.yaml")[0]
    for where, typo in (
        (lambda d: d["spec"], "schedul"),
        (lambda d: d["spec"]["jobTemplate"], "entrypont"),
        (lambda d: d["spec"]["jobTemplate"]["rayClusterSpec"]["headGroupSpec"], "rayStartParam"),
        (
            lambda d: d["spec"]["jobTemplate"]["rayClusterSpec"]["headGroupSpec"]["template"][
                "spec"
            ]["containers"][0],
            "imagePullPolicyy",
        ),
    ):
        bad = copy.deepcopy(cron)
        where(bad)[typo] = "x"
        with pytest.raises(jsonschema.ValidationError, match=typo):
            validate_k8s(bad)
    bad = copy.deepcopy(cron)
    bad["spec"]["jobTemplate"]["backoffLimit"] = "one"
    with pytest.raises(jsonschema.ValidationError):
        validate_k8s(bad)
    cronjob = next(d for d in documents(INFRA / "k8s" / "daily-cronjob.yaml") if d["kind"] == "CronJob")  # fmt: skip
    cronjob["spec"]["concurrencyPolicyy"] = "Forbid"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_k8s(cronjob)
    compose = yaml.safe_load((INFRA / "compose.yaml").read_text())
    compose["services"]["mlflow"]["dependson"] = ["postgres"]
    with pytest.raises(jsonschema.ValidationError, match="dependson"):
        compose_validator().validate(compose)


def _daily_jobs() -> list[dict[str, Any]]:
    cron = documents(INFRA / "k8s" / "daily-raycronjob.yaml")[0]
    [submitted] = [
        job for doc in documents(INFRA / "k8s" / "daily-cronjob.yaml") for job in embedded_rayjobs(doc)
    ]  # fmt: skip
    return [cron["spec"]["jobTemplate"], submitted["spec"]]


def test_both_daily_schedules_run_the_same_rayjob() -> None:
    from_cron, submitted = _daily_jobs()
    assert from_cron == submitted


def test_the_daily_command_parses_and_its_config_loads(tmp_path: Path) -> None:
    """The entrypoint is a real `plexus run` of a bundled retrieval config with the gate on."""
    from plexus.pipelines.cli import build_parser, cmd_run
    from plexus.pipelines.config import config_path
    from plexus.pipelines.retrieval import load_retrieval_config

    entrypoint = _daily_jobs()[0]["entrypoint"]
    argv = shlex.split(entrypoint)
    assert argv[:2] == ["plexus", "run"]
    args = build_parser().parse_args(argv[1:])
    assert args.func is cmd_run
    config = load_retrieval_config(config_path(args.config), args.overrides)
    assert config.promote.gate and config.export.alias == "champion"
    assert config.data.path.startswith("/data/")


def test_compose_stack_runs_mlflow_on_postgres_with_a_ray_head_and_worker() -> None:
    services = yaml.safe_load((INFRA / "compose.yaml").read_text())["services"]
    assert {"postgres", "mlflow", "ray-head", "ray-worker"} <= set(services)
    command = " ".join(services["mlflow"]["command"].split())
    store = command.split("--backend-store-uri ")[1].split()[0]
    assert store.startswith("postgresql+psycopg2://") and "@postgres:5432/" in store
    assert "--address=ray-head:6379" in services["ray-worker"]["entrypoint"]
    assert services["mlflow"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_daily_schedules_are_five_field_cron_lines() -> None:
    """What the CronJob controller and KubeRay's cron parser take (robfig/cron, 5 fields)."""
    import re

    field = re.compile(r"^(\*|\d+(-\d+)?)(/\d+)?(,(\*|\d+(-\d+)?)(/\d+)?)*$")
    schedules = [documents(INFRA / "k8s" / "daily-raycronjob.yaml")[0]["spec"]["schedule"]]
    schedules += [
        d["spec"]["schedule"]
        for name in ("daily-cronjob.yaml", "train-job.yaml")
        for d in documents(INFRA / "k8s" / name)
        if d["kind"] == "CronJob"
    ]
    assert len(schedules) == 3
    for schedule in schedules:
        parts = schedule.split()
        assert len(parts) == 5 and all(field.match(p) for p in parts), schedule
