"""Processes as /proc shows them: children, liveness, signal handlers, and the ones a test
run started (found by a marker in their environment, which every child inherits)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
# redis-server writes its process title over the memory /proc/<pid>/environ shows, and so
# hides the run's mark from `marked`: a test's redis-server left running outlived the run
# unseen by conftest.py's check. Started this way, it keeps its environment readable.
REDIS_SERVER = ("redis-server", "--set-proc-title", "no")


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state first), None if gone."""
    try:
        return (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def running(pid: int) -> bool:
    """The process exists and is not a zombie (dead, waiting to be reaped)."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def parent(pid: int) -> int | None:
    """The parent of pid, None if it is gone."""
    fields = _stat_fields(pid)
    return int(fields[1]) if fields is not None else None


def children(pid: int) -> list[int]:
    """Direct child processes of pid."""
    kids = []
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None and int(fields[1]) == pid:
                kids.append(int(entry.name))
    return kids


def horses(worker: subprocess.Popen) -> list[int]:
    """An RQ worker's work-horses: its children that lead their own process group."""
    found = []
    for pid in children(worker.pid):
        with contextlib.suppress(ProcessLookupError):
            if os.getpgid(pid) == pid:
                found.append(pid)
    return found


def horse_of(worker: subprocess.Popen) -> int:
    """The worker's work-horse, waited for (at most 60 s) while it is being forked."""
    from tests.helpers import wait_for

    return wait_for(lambda: next(iter(horses(worker)), None), timeout=60,
                    what="the work-horse")


def in_session(sid: int) -> list[int]:
    """Live processes of session sid (a worker started in a session of its own: the worker,
    its reconciler, its work-horses and their ffmpeg)."""
    found = []
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None and int(fields[3]) == sid and fields[0] not in ("Z", "X"):
                found.append(int(entry.name))
    return found


def cmdline(pid: int) -> str:
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def thread_nices(pid: int) -> set[int]:
    """The nice values of all of the process's threads (Linux keeps one per thread); empty
    if it is gone."""
    found = set()
    try:
        tasks = list((PROC / str(pid) / "task").iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            # Field 19 of stat is the nice value; 17 after the command name, state first.
            found.add(int(task.joinpath("stat").read_text().rsplit(")", 1)[1].split()[16]))
        except (OSError, IndexError, ValueError):
            continue
    return found


def handles_signal(pid: int, signum: int) -> bool:
    """Whether the process has installed a handler for signum (SigCgt in its status)."""
    try:
        status = (PROC / str(pid) / "status").read_text()
    except OSError:
        return False
    for line in status.splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False


def environ(pid: int) -> dict[str, str]:
    """The environment the process started with (empty if unreadable or gone)."""
    try:
        raw = (PROC / str(pid) / "environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.decode(errors="replace").partition("=") for item in raw.split(b"\0") if item)
    return {key: value for key, _, value in pairs}


@dataclass(frozen=True)
class Marked:
    pid: int
    command: str
    started_by: str  # the test during which it was started (see conftest.py)

    def __str__(self) -> str:
        return f"pid {self.pid} ({self.command[:160]}) started by {self.started_by}"


def marked(name: str, value: str) -> list[Marked]:
    """Live processes whose environment has name=value, except this one."""
    found = []
    for entry in PROC.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        pid = int(entry.name)
        env = environ(pid)
        if env.get(name) == value and running(pid):
            found.append(Marked(pid, cmdline(pid), env.get(f"{name}_TEST", "?")))
    return found


def kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def signal_storm(proc: subprocess.Popen, first: int = signal.SIGINT,
                 then: int = signal.SIGTERM, *, group: bool = False,
                 seconds: float = 10.0) -> None:
    """`first` (to the process's whole group with `group`, as Ctrl-C in its terminal), then
    `then` every 0.5 ms until it has ended, for `seconds` at most. Signals come in twos and
    threes as a process stops (Ctrl-C, then its parent's or the service manager's SIGTERM):
    the storm makes one arrive at every stage of its exit, in its atexit callbacks and after
    Python has put the default handlers back too, every time instead of once in a while."""
    if group:
        os.killpg(proc.pid, first)
    else:
        proc.send_signal(first)
    deadline = time.monotonic() + seconds
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            proc.send_signal(then)
        except ProcessLookupError:
            break
        time.sleep(0.0005)
