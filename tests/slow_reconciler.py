"""`python -m jobs.reconciler`, but each pass stands still under its lock for PASS_SECONDS
(environment, default 120) after saying "in its pass" on stderr: a test can stop it there,
as a host whose link goes down mid-pass, or let a pass outlast the lock's timeout, set by
LOCK_SECONDS (tests/test_crashes.py)."""

from __future__ import annotations

import os
import sys
import time

from jobs import reconciler

_sweep_staging = reconciler.sweep_staging  # a part of every pass, under its lock


def slow_sweep(settings, *args, **kwargs):
    print("in its pass", file=sys.stderr, flush=True)
    time.sleep(float(os.environ.get("PASS_SECONDS", "120")))
    return _sweep_staging(settings, *args, **kwargs)


reconciler.sweep_staging = slow_sweep
reconciler.LOCK_SECONDS = float(os.environ.get("LOCK_SECONDS", reconciler.LOCK_SECONDS))

if __name__ == "__main__":
    raise SystemExit(reconciler.main())
