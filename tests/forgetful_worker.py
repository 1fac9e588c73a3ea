"""`python -m jobs.worker`, but its horses never save the attempt number they run into the
job's meta (jobs/runner.py, `_remember_attempt`): they say on stderr which step and attempt
they hold ("holding transcode attempt 1"), then wait there. A stop signal then always lands
where one lands only now and then in a real worker, after the step was committed running
and before the crash hooks can know its attempt (tests/test_workers.py)."""

from __future__ import annotations

import sys
import time

from jobs import runner
from jobs.worker import main


def _remember_attempt(job, attempt: int) -> None:
    step = job.meta.get("step") if job is not None else None
    print(f"holding {step} attempt {attempt}", file=sys.stderr, flush=True)
    time.sleep(60.0)  # the test stops the worker meanwhile


runner._remember_attempt = _remember_attempt

if __name__ == "__main__":
    raise SystemExit(main())
