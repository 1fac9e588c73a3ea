"""`python -m jobs.worker`, but RQ's wait for a job (BLMOVE) is sent 2 s before its reply
is read, and says so on stderr ("BLMOVE sent"): a stop signal then lands between the two
every time instead of once in many runs (tests/test_workers.py)."""

from __future__ import annotations

import sys
import time

from redis.connection import AbstractConnection

from jobs.worker import main

WAITS = {"BLMOVE", "BLPOP"}  # RQ 3 waits with BLMOVE (its reliable queue), RQ 2 with BLPOP
_send_command = AbstractConnection.send_command


def send_command(self, *args, **kwargs):
    _send_command(self, *args, **kwargs)
    if args and str(args[0]).upper() in WAITS:
        print(f"{args[0]} sent", file=sys.stderr, flush=True)
        time.sleep(2.0)


AbstractConnection.send_command = send_command

if __name__ == "__main__":
    raise SystemExit(main())
