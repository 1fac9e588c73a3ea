"""Workers on other hosts: what exchanging media over HTTP costs, and 1 vs 2 worker hosts.

On the separate hosts of tests/hosts.py (network and mount namespaces, as root: a server
host with its own PostgreSQL, Redis and web app, worker hosts with their own MEDIA_ROOT), a
batch of short speech videos is processed four times:

1. **one host**: one worker on the server host, on the server's MEDIA_ROOT (no exchange),
   then two;
2. **one worker host**: one worker on w1 with SERVER_URL (downloads, uploads);
3. **two worker hosts**: one worker on w1 and one on w2.

Per step, the exchange's overhead is the median step time (from the step's started_at to
its finished_at, as the API reports them) of run 2 minus that of run 1: the same work,
once with the transfers. The bytes moved per video are what the workers report per step
("N bytes down, M up"). On this machine the hosts share 2 cores, so run 3 is compared with
two workers on one host: the scaling model's overhead, not a speed-up (on real machines
each host brings its own cores).

    sudo .venv/bin/python -m bench.exchange        (about 3 minutes)
"""

from __future__ import annotations

import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path

from bench.common import Result
from tests import hosts, mediagen

CACHE = Path(__file__).resolve().parent / ".cache" / "exchange"
TEXTS = ("The quarterly report is ready for the whole team to read.",
         "Please bring the signed forms to the front desk on Monday.",
         "Our next meeting moves to the large room on the third floor.",
         "The new build passed every check and ships tomorrow morning.",
         "Coffee in the kitchen is free again from this week on.",
         "Remember to lock the door when you leave the office tonight.",
         "The library closes early on Friday for the inventory.",
         "Two new colleagues join the support team next month.")
WORKER_ENV = {"WHISPER_MODEL": "tiny.en"}
MOVED = re.compile(r"(\w+) of task (\S+) completed on (\S+) \(attempt \d+, (\d+) bytes down, "
                   r"(\d+) up\)")


def media() -> list[Path]:
    CACHE.mkdir(parents=True, exist_ok=True)
    out = []
    for i, text in enumerate(TEXTS):
        path = CACHE / f"talk{i}.mp4"
        if not path.exists():
            mediagen.make_speech_video(path, text, size="640x360")
        out.append(path)
    return out


def run_batch(site: hosts.Site, vids: list[str], timeout: float = 900) -> tuple[float, dict]:
    """Trigger every video, wait until all ended; (wall seconds, final states)."""
    started = time.monotonic()
    for vid in vids:
        resp = site.api.post(f"{site.url}/api/v1/videos/{vid}/reprocess", timeout=30)
        assert resp.status_code == 202, resp.text
    deadline = started + timeout
    while time.monotonic() < deadline:
        states = {vid: site.api.get(f"{site.url}/api/v1/videos/{vid}/reprocess",
                                    timeout=30).json() for vid in vids}
        if all(s["status"] not in ("queued", "running") for s in states.values()):
            bad = [s for s in states.values() if s["status"] != "completed"]
            assert not bad, bad
            return time.monotonic() - started, states
        time.sleep(0.5)
    raise TimeoutError("the batch did not end in time")


def step_seconds(states: dict) -> dict[str, list[float]]:
    found = defaultdict(list)
    for state in states.values():
        for sub in state["subtasks"]:
            if sub["started_at"] and sub["finished_at"]:
                took = (datetime.fromisoformat(sub["finished_at"])
                        - datetime.fromisoformat(sub["started_at"])).total_seconds()
                found[sub["name"]].append(took)
    return found


def moved(site: hosts.Site, task_ids: set[str]) -> tuple[int, int]:
    down = up = 0
    for name in ("worker-w1.log", "worker-w2.log"):
        for match in MOVED.finditer(site.logs_text(name)):
            if match.group(2) in task_ids:
                down += int(match.group(4))
                up += int(match.group(5))
    return down, up


def main() -> None:
    videos = media()
    sizes = sum(p.stat().st_size for p in videos)
    with tempfile.TemporaryDirectory(prefix="vidpipe-bench-exchange-") as tmp, \
            hosts.Site(Path(tmp)) as site:
        site.start_server()
        w1, w2 = site.add_worker_host("w1"), site.add_worker_host("w2")
        vids = []
        for path in videos:
            with open(path, "rb") as fh:
                resp = site.api.post(site.url + "/api/v1/videos",
                                     files={"file": (path.name, fh)}, timeout=60)
            assert resp.status_code == 201, resp.text
            vids.append(resp.json()["id"])

        # 1. One host: workers on the server, on its MEDIA_ROOT (one, then two).
        def local_worker() -> subprocess.Popen:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", site.server.namespace, sys.executable, "-m",
                 "jobs.worker"], cwd=hosts.PROJECT_ROOT, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, start_new_session=True,
                env={**site.web_env, "WORKER_NAME": "web-host", **WORKER_ENV})
            site.server.procs.append(proc)
            return proc
        locals_ = [local_worker()]
        wall_local, states_local = run_batch(site, vids)
        locals_.append(local_worker())
        wall_local_two, _ = run_batch(site, vids)
        for proc in locals_:
            proc.terminate()
        for proc in locals_:
            proc.wait(30)

        # 2. One worker host.
        site.start_worker(w1, **WORKER_ENV)
        wall_one, states_one = run_batch(site, vids)
        one_tasks = {s["task_id"] for s in states_one.values()}
        down, up = moved(site, one_tasks)

        # 3. Two worker hosts.
        site.start_worker(w2, **WORKER_ENV)
        wall_two, states_two = run_batch(site, vids)
        shares = defaultdict(int)
        for state in states_two.values():
            for sub in state["subtasks"]:
                shares[sub["worker"]] += 1

    local_steps, remote_steps = step_seconds(states_local), step_seconds(states_one)
    overhead = {step: round(statistics.median(remote_steps[step])
                            - statistics.median(local_steps[step]), 3)
                for step in local_steps}
    per_step = {step: {"one host (s)": round(statistics.median(local_steps[step]), 3),
                       "worker host (s)": round(statistics.median(remote_steps[step]), 3),
                       "overhead (s)": overhead[step]} for step in local_steps}
    n = len(vids)
    details = {
        "videos": n, "source bytes per video": sizes // n,
        "batch wall seconds": {"one host, 1 worker": round(wall_local, 2),
                               "one host, 2 workers": round(wall_local_two, 2),
                               "1 worker host": round(wall_one, 2),
                               "2 worker hosts": round(wall_two, 2)},
        "steps": per_step,
        "bytes per video": {"down": down // n, "up": up // n, "total": (down + up) // n},
        "steps per worker (2 hosts)": dict(shares),
        "whisper model": WORKER_ENV["WHISPER_MODEL"],
    }
    mean_overhead = statistics.mean(overhead.values())
    Result(
        name="exchange",
        title="Workers on other hosts: HTTP exchange overhead per step, 1 vs 2 worker hosts "
              "(separate network hosts, 2 shared cores)",
        target="reported (no target): overhead per step, bytes moved per video",
        measured=(f"overhead {mean_overhead:+.2f} s per step on average "
                  f"({', '.join(f'{k} {v:+.2f}' for k, v in overhead.items())}); "
                  f"{(down + up) / n / 1e6:.2f} MB moved per video "
                  f"({sizes / n / 1e6:.2f} MB source); batch of {n}: one host with 1 / 2 "
                  f"workers {wall_local:.1f} / {wall_local_two:.1f} s, 1 / 2 worker hosts "
                  f"{wall_one:.1f} / {wall_two:.1f} s"),
        met=None,
        details=details,
    ).write()


if __name__ == "__main__":
    main()
