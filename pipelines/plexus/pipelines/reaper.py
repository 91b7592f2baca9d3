"""Leave no process behind: a watchdog that ends a dead driver's local Ray.

A job that starts a local Ray (`runtime.ensure_ray`) owns a tree of processes: the GCS, the
raylet, agents, workers. When the driver exits normally `ray.shutdown` ends them, but a driver
killed with SIGKILL (or by the OOM killer) runs no code, and some of them outlive it (Ray's
dashboard and runtime-env agents were seen alive minutes later, reparented to init).

`start(driver_pid)` launches this module as a small separate process (its own session, so a
Ctrl-C of the terminal does not take it first). It records the driver's descendants every
`SCAN_SECONDS` (pid and start time, so a reused pid is never mistaken for one of them) and
blocks on a pipe from the driver. The pipe closes when the driver dies, however it dies; the
watchdog then sends SIGTERM to every recorded process still alive and to their descendants,
SIGKILL to those left after `GRACE_SECONDS`, and exits. Linux only (it reads /proc); elsewhere
`start` does nothing.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

SCAN_SECONDS = 1.0
GRACE_SECONDS = 3.0
_PROC = Path("/proc")

Process = tuple[int, int]  # (pid, start time in clock ticks since boot)


def start(driver_pid: int) -> subprocess.Popen[bytes] | None:
    """Watch `driver_pid` (normally this process) from a separate process; None off Linux."""
    if not _PROC.is_dir() or os.environ.get("PLEXUS_NO_REAPER"):
        return None
    return subprocess.Popen(
        [sys.executable, "-m", "plexus.pipelines.reaper", str(driver_pid)],
        stdin=subprocess.PIPE,  # the driver holds the write end until it dies
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
    )


def descendants(pid: int) -> set[Process]:
    """Every live descendant of `pid` (children, their children, ...), with start times."""
    children: dict[int, list[int]] = {}
    for entry in _PROC.iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None:
                children.setdefault(stat[0], []).append(int(entry.name))
    found: set[Process] = set()
    todo = list(children.get(pid, ()))
    while todo:
        child = todo.pop()
        stat = _stat(child)
        if stat is not None and (child, stat[1]) not in found:
            found.add((child, stat[1]))
            todo.extend(children.get(child, ()))
    return found


def alive(process: Process) -> bool:
    """Whether `process` still runs (the same pid with the same start time, not a zombie)."""
    stat = _stat(process[0])
    return stat is not None and stat[1] == process[1]


def end(processes: set[Process], *, grace: float = GRACE_SECONDS) -> set[Process]:
    """SIGTERM `processes` (and what they started since), then SIGKILL whatever is left after
    `grace` seconds; returns the set that was signalled."""
    targets = {p for p in processes if alive(p)}
    for process in list(targets):
        targets |= descendants(process[0])
    _signal(targets, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(alive(p) for p in targets):
        time.sleep(0.1)
    _signal({p for p in targets if alive(p)}, signal.SIGKILL)
    return targets


def watch(driver_pid: int) -> None:
    """The watchdog's loop (see the module docstring)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    me = os.getpid()
    seen: set[Process] = set()
    while True:
        seen = {p for p in seen if alive(p)} | {p for p in descendants(driver_pid) if p[0] != me}
        ready, _, _ = select.select([sys.stdin], [], [], SCAN_SECONDS)
        if ready and not os.read(sys.stdin.fileno(), 4096):
            break  # EOF: the driver is gone
    time.sleep(0.5)  # a driver that exited cleanly has already shut its Ray down
    end(seen)


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time) from /proc/PID/stat; None for a gone process or a zombie."""
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the command name may hold spaces
    if fields[0] == "Z":
        return None
    return int(fields[1]), int(fields[19])


def _signal(processes: set[Process], signum: int) -> None:
    for pid, _ in processes:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


if __name__ == "__main__":
    watch(int(sys.argv[1]))
