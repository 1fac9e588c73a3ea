"""Leaving nothing behind: a test queue's Redis keys, and every process of a session."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path

from redis import Redis


def purge_queue(conn: Redis, queue_name: str, task_ids: Iterable[str] = ()) -> int:
    """Delete the Redis keys of a test's queue (registries, its workers, the reconciler's
    lock), of its jobs (found by their origin, so also those of tasks the test deleted) and
    of its tasks' jobs; the number deleted. One pass over the key space."""
    every = list(conn.scan_iter(count=1000))
    jobs = [key for key in every if key.startswith(b"rq:job:") and key.count(b":") == 2]
    with conn.pipeline(transaction=False) as pipe:
        for key in jobs:
            pipe.hget(key, "origin")
        origins = pipe.execute(raise_on_error=False)
    queue = queue_name.encode()
    names = [queue, *(t.encode() for t in task_ids),
             *(key.removeprefix(b"rq:job:") for key, origin in zip(jobs, origins, strict=True)
               if origin == queue)]
    keys = {key for key in every if any(name in key for name in names)}
    # Dead workers' keys expire by themselves a minute later; theirs go now, and those of
    # any dead worker (a test may start one on another queue).
    keys |= {key for key in conn.scan_iter(match="rq:worker:*", count=500, _type="hash")
             if conn.hget(key, "queues") == queue_name.encode() or conn.hexists(key, "death")}
    # RQ's lock for cleaning job groups, taken by a worker's maintenance for minutes.
    keys.add(b"rq:clean_groups")
    conn.srem("rq:queues", f"rq:queue:{queue_name}")
    deleted = conn.delete(*keys)
    # The register of workers names them: drop the names whose keys are gone.
    gone = [name for name in conn.smembers("rq:workers") if not conn.exists(name)]
    if gone:
        conn.srem("rq:workers", *gone)
    return deleted


def session_of(pid: int) -> int | None:
    """The session id of a process (None if it is gone)."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[3])
    except (OSError, ValueError, IndexError):
        return None


def processes_in(sessions: Iterable[int]) -> dict[int, str]:
    """pid -> command line of every live (not zombie) process in these sessions.

    A process started with start_new_session=True leads a session of its own, and
    everything it starts stays in it (RQ's work-horses only change their process group):
    the way to find all that a worker or a web server left behind.
    """
    wanted = set(sessions)
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if fields[0] == "Z" or int(fields[3]) not in wanted:
                continue
            cmd = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError, IndexError):
            continue
        found[int(stat.parent.name)] = cmd.strip()
    return found


def wait_sessions_gone(sessions: Iterable[int], timeout: float) -> dict[int, str]:
    """Wait until no process of these sessions lives; what is still alive at the end."""
    sessions = list(sessions)
    deadline = time.monotonic() + timeout
    while (left := processes_in(sessions)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def kill_sessions(sessions: Iterable[int]) -> None:
    """SIGKILL every process left in these sessions (a teardown's last resort)."""
    for pid in processes_in(sessions):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
