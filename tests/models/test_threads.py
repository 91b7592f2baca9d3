"""The CPU set-up every training process runs first."""

from __future__ import annotations

import subprocess
import sys

_PROBE = """
import torch
from plexus.models.threads import use_cpu_threads

tiny = torch.tensor([1e-39])  # a denormal float32
before = float(tiny * 2.0)
use_cpu_threads(1)
print(before, float(tiny * 2.0), torch.get_num_threads())
"""


def test_use_cpu_threads_flushes_denormals_and_sets_the_threads() -> None:
    # A fresh interpreter: the flag is process state that must not leak into other tests.
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True
    ).stdout.split()
    before, after, threads = float(out[0]), float(out[1]), int(out[2])
    assert before > 0.0  # denormal arithmetic is on by default: the probe can see the change
    assert after == 0.0
    assert threads == 1
