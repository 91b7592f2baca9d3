"""The CPU set-up every training process runs first, undone for callers in their own process."""

from __future__ import annotations

import subprocess
import sys

_PROBE = """
import torch
from plexus.models.threads import flushes_denormals, restores_cpu_state, use_cpu_threads

tiny = torch.tensor([1e-39])  # a denormal float32
torch.set_num_threads(2)
seen = []

@restores_cpu_state()
def train():
    use_cpu_threads(1)
    seen.extend([float(tiny * 2.0), flushes_denormals(), torch.get_num_threads()])

before = [float(tiny * 2.0), flushes_denormals()]
train()
print(*before, *seen, float(tiny * 2.0), flushes_denormals(), torch.get_num_threads())
"""


def test_training_flushes_denormals_and_its_caller_gets_its_state_back() -> None:
    # A fresh interpreter: the flag is process state that must not leak into other tests.
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True
    ).stdout.split()
    assert float(out[0]) > 0.0 and out[1] == "False"  # denormals on by default: can see a change
    assert float(out[2]) == 0.0 and out[3] == "True" and out[4] == "1"  # inside: flushed, 1 thread
    assert float(out[5]) > 0.0 and out[6] == "False" and out[7] == "2"  # after: the caller's
