"""Threads that leave the stop signals (SIGINT, SIGTERM, SIGQUIT) to the main thread.

A process stopping on its first stop signal blocks the later ones, on its main thread
(jobs/reconciler.py `_end`, jobs/worker.py `request_stop`, webapp/webworker.py
`handle_quit`). The kernel gives a signal to any thread that does not block it, though: a
later one taken by another thread (a daemon thread still there as Python exits) once
Python's exit had put the default handlers back ended the process by it (status -15, not
0). Python runs the handlers on the main thread, whichever thread took the signal, so a
thread loses nothing by blocking them; a thread starts with its starter's mask.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGQUIT}


def block_in_this_thread() -> None:
    """Block the stop signals in the calling thread (a thread pool's initializer)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


@contextlib.contextmanager
def threads_started_here_block_them() -> Iterator[None]:
    """Threads started within (by this thread) block the stop signals; this thread's mask
    is as it was afterwards (a signal that came meanwhile is taken then)."""
    before = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)
