"""Process-level set-up shared by jobs: quiet, local-first defaults for Ray and friends."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from plexus.pipelines import reaper
from plexus.platform.errors import PlexusError

T = TypeVar("T")
RAY_START_ATTEMPTS = 4  # waits of 2, 4 and 8 s between them

# Tools that phone home or write into $HOME unless told otherwise (see DEPENDENCIES.md).
_QUIET_ENV = {
    "RAY_AUTH_MODE": "disabled",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DEDUP_LOGS": "0",
    "RAY_TRAIN_V2_ENABLED": "1",
    # Train's print patch both prints and logs each worker line: every epoch line came twice.
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    "TOKENIZERS_PARALLELISM": "false",
    # Ray starts workers at niceness 15; on a busy machine the training worker then starves.
    "RAY_worker_niceness": "0",
}


def quiet_environment() -> None:
    """Set the environment defaults above unless the user already chose otherwise."""
    for key, value in _QUIET_ENV.items():
        os.environ.setdefault(key, value)


def quiet_ray_data() -> None:
    """Ray Data's per-operator progress bars flood job logs; Plexus prints its own progress."""
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False


def quiet_ray_worker() -> None:
    """Ray's `worker_process_setup_hook` for the local Ray that `ensure_ray` starts.

    Ray Train's placement-group cleaner checks that the train controller lives through the
    state API, which goes through the dashboard that a local Ray here runs without: it warned
    every 2 s, and when a second Ray ran on the machine (another job) the address lookup raised
    "Found multiple active Ray instances" and printed a traceback in a normal run. The cleaner
    asks the GCS of its own cluster instead (`ray._private.state.actors`, no dashboard).
    """
    import ray._private.state
    from ray.train.v2._internal.execution.controller import placement_group_cleaner

    def controller_alive(actor_id: str, timeout: float | None = None) -> bool:
        info = ray._private.state.actors(actor_id=actor_id)
        return not info or info.get("State") != "DEAD"

    placement_group_cleaner.is_actor_alive = controller_alive
    cleaner = "ray.train.v2._internal.execution.controller.placement_group_cleaner"
    logging.getLogger(cleaner).setLevel(logging.ERROR)
    # Two INFO lines per epoch ("Reporting training result ...", "Checkpoint successfully
    # created at ...") beside the job's own epoch line; warnings and errors still show.
    from ray.train._internal import storage as v1_storage
    from ray.train.v2._internal.execution import context, storage

    for module in (context, storage, v1_storage):
        module.logger.setLevel(logging.WARNING)
    # A local Ray has no autoscaler, so Ray Train's resource requests to the autoscaling
    # coordinator change nothing here; while other jobs held the cores their 5 s timeout
    # printed "Failed to send resource request" with a traceback (Ray: safe to ignore when
    # transient). Errors still show.
    from ray.train.v2._internal.execution.scaling_policy import (
        autoscaling_coordinator_client as autoscaling,
    )

    autoscaling.logger.setLevel(logging.ERROR)


def ensure_ray(*, num_cpus: int | None = None, address: str | None = None) -> None:
    """Start (or connect to) Ray once per process.

    `address` (or `RAY_ADDRESS`) joins an existing cluster; otherwise a local Ray starts with
    `num_cpus` (default: all cores) and a modest object store, logging to the terminal only.
    """
    quiet_environment()
    import ray

    quiet_ray_data()
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        return
    options = dict(
        num_cpus=num_cpus or os.cpu_count() or 1,
        object_store_memory=1 << 30,
        include_dashboard=False,
        log_to_driver=True,
        configure_logging=False,
        runtime_env={
            "env_vars": dict(_QUIET_ENV),
            "worker_process_setup_hook": f"{__name__}.quiet_ray_worker",
        },
    )
    retry(
        lambda: ray.init(**options),
        what="start a local Ray",
        advice=(
            "the machine is probably overloaded (Ray's node start-up timed out): wait for "
            "other jobs to finish and run the command again, or set RAY_ADDRESS to join a "
            "running Ray cluster"
        ),
        cleanup=ray.shutdown,
    )
    global _reaper
    _reaper = reaper.start(os.getpid())


_reaper: object = None  # the watchdog that ends this Ray if the process is killed (`reaper`)


def retry(
    action: Callable[[], T],
    *,
    what: str,
    advice: str,
    attempts: int = RAY_START_ATTEMPTS,
    first_wait: float = 2.0,
    cleanup: Callable[[], object] | None = None,
) -> T:
    """`action()`, retried with doubling waits when it raises; then a `PlexusError` that says
    what failed, the last cause and what to do, instead of a raw traceback."""
    wait = first_wait
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except Exception as exc:
            if cleanup is not None:
                cleanup()
            if attempt == attempts:
                raise PlexusError(
                    f"could not {what} after {attempts} tries ({type(exc).__name__}: {exc}); "
                    f"{advice}"
                ) from exc
            print(
                f"[plexus] could not {what} ({type(exc).__name__}); retrying in {wait:.0f} s "
                f"({attempt}/{attempts})",
                file=sys.stderr,
                flush=True,
            )
            time.sleep(wait)
            wait *= 2
    raise AssertionError("unreachable")


def default_runs_dir() -> Path:
    """Where jobs write outputs unless configured: `./runs` (or `PLEXUS_RUNS_DIR`)."""
    return Path(os.environ.get("PLEXUS_RUNS_DIR", "runs")).resolve()


def process_memory(pid: int | None = None) -> dict[str, int]:
    """Resident bytes of a process (default this one) now (`rss`) and at its peak (`peak`),
    from /proc (`VmRSS`, `VmHWM`; not `ru_maxrss`, which Linux carries over from a forking
    parent across exec)."""
    fields = {}
    for line in Path(f"/proc/{pid or os.getpid()}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024
    return {"rss": fields["VmRSS"], "peak": fields["VmHWM"]}
