"""A normal run prints no traceback, even while another Ray instance runs on the machine (Ray
Train's placement-group cleaner used to fail its address lookup and print one)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_runner import plexus, tiny_ctr_job

OTHER_RAY = """
import ray, sys, time
ray.init(num_cpus=1, include_dashboard=False, object_store_memory=100 << 20)
print("up", flush=True)
sys.stdin.read()
"""


@pytest.mark.slow
@pytest.mark.reliability(
    "fault", "another Ray instance on the machine: a normal run prints no traceback"
)
def test_a_run_beside_another_ray_prints_no_traceback(tmp_path: Path) -> None:
    other = subprocess.Popen(
        [sys.executable, "-c", OTHER_RAY],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, "RAY_ADDRESS": ""},
    )
    try:
        assert other.stdout.readline().strip() == "up"
        config = tiny_ctr_job(
            tmp_path,
            "quiet",
            rows=4_000,
            seed=5,
            sections="model: {backbone: lr}\nembedding: {method: full, dim: 4}\n"
            "train: {batch_size: 256, epochs: 2, threads_per_worker: 1}",
        )
        time.sleep(1)
        done = plexus("train", str(config), cwd=tmp_path)
        output = done.stdout + done.stderr
        assert done.returncode == 0, output[-3000:]
        assert "Traceback" not in output and "multiple active Ray" not in output, output[-4000:]
    finally:
        other.stdin.close()
        other.wait(timeout=60)
