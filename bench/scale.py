"""Scale with the number of videos: list pages and progress polls, 10 000 videos vs 10.

For each backend, SQLite (a file, WAL) and PostgreSQL (BENCH_POSTGRES_URL, default
postgresql+psycopg://postgres@127.0.0.1:5432/test, in a private schema dropped afterwards),
databases are migrated with alembic and filled with SQLAlchemy Core bulk inserts: N videos,
each with one completed task and its 4 completed subtasks, created one second apart. N is
10 000, 10 (the comparison of the target) and 20 (one full page, so that the page shows as
many rows as with 10 000 and only the size of the tables differs).

Requests go through vidpipe's Flask app in this process (its test client: the app's own
time, without HTTP or a server around it; Redis on BENCH_REDIS_URL answers the UI's queue
check):

- list: `GET /api/v1/videos?page=1&page_size=10` (JSON: a page of 10, so that the first page
  holds the same number of rows with 10 videos as with 10 000 and only the size of the
  tables differs) and `GET /` (the library page, 20 rows a page: 10 rows with 10 videos, 20
  with 20 or 10 000, hence also the comparison with 20);
- poll: `GET /api/v1/videos/<id>/reprocess` of a video in the middle, plain (200) and
  conditional (If-None-Match, 304), and the library row fragment `GET /videos/<id>/row`.

Each of BENCH_RUNS (5) rounds times BENCH_REQUESTS (60) requests of each endpoint on each
database, after a warm-up, the databases taking turns request by request (in alternating
order: a shared VM's speed drifts); per endpoint: the median of the rounds' median latency,
the ratio 10 000 / 10 (and 10 000 / 20), and the SQL statements one request sends (counted
with a before_cursor_execute listener).

The target compares each request with the same request on the small database whose answer
holds as much: 10 videos for the polls, the row fragment and the JSON list (pages of 10),
20 for the library page (20 rows a page: with 10 videos it shows half as many rows as with
10 000, which measures the page's size, not the database's). Both ratios are reported.

    .venv/bin/python -m bench.scale
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

from bench.common import Result, spread
from bench.polling import REDIS_URL, loadavg, migrate, postgres_schema, run_main, workdir
from webapp.config import DEFAULT_WEIGHTS, STEPS

RUNS = int(os.environ.get("BENCH_RUNS", "5"))
REQUESTS = int(os.environ.get("BENCH_REQUESTS", "60"))
SIZES = (10, 20, 10_000)
BIG, SMALL = 10_000, 10
TARGET = 1.5
# The ratio each endpoint's target uses (see above): 10 000 / 10, or 10 000 / 20 for the
# library page, whose page of 20 rows holds 10 with 10 videos.
SAME_ANSWER = {"list_api": "ratio_10000_vs_10", "list_ui": "ratio_10000_vs_20",
               "poll": "ratio_10000_vs_10", "poll_304": "ratio_10000_vs_10",
               "row_ui": "ratio_10000_vs_10"}


def fill(database_url: str, count: int) -> str:
    """`count` videos, each with a completed task and 4 completed subtasks; a middle id."""
    from sqlalchemy import insert

    from webapp.db import get_engine
    from webapp.models import ProcessingTask, SubTask, Video, new_id, utcnow

    start = utcnow() - timedelta(seconds=count + 60)
    videos, tasks, subtasks = [], [], []
    for i in range(count):
        created = start + timedelta(seconds=i)
        vid, tid = new_id(), new_id()
        videos.append(dict(id=vid, original_filename=f"video {i:05d}.mp4",
                           stored_name="source.mp4", size_bytes=5_000_000 + i,
                           format_name="mov,mp4,m4a,3gp,3g2,mj2", duration=60.0 + i % 600,
                           width=1280, height=720, has_audio=True, has_video=True,
                           video_codec="h264", audio_codec="aac", created_at=created))
        done = created + timedelta(seconds=30)
        tasks.append(dict(id=tid, video_id=vid, mode="run_sync", status="completed",
                          error=None, created_at=created, started_at=created,
                          finished_at=done, version=10, updated_at=done))
        for position, step in enumerate(STEPS):
            subtasks.append(dict(task_id=tid, name=step, position=position,
                                 weight=DEFAULT_WEIGHTS[step], status="completed",
                                 progress=100.0, attempt=1, reused=False, error=None,
                                 started_at=created, finished_at=done))
    engine = get_engine(database_url)
    with engine.begin() as conn:
        for table, rows in ((Video, videos), (ProcessingTask, tasks), (SubTask, subtasks)):
            for i in range(0, len(rows), 5000):
                conn.execute(insert(table), rows[i:i + 5000])
    if engine.dialect.name == "postgresql":  # what autovacuum does soon after such inserts
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("ANALYZE")
    # (SQLite: no ANALYZE, as in a deployment, where nothing runs it)
    return videos[count // 2]["id"]


@contextlib.contextmanager
def database(backend: str, tmp: Path, size: int) -> Iterator[str]:
    if backend == "sqlite":
        url = f"sqlite:///{tmp / f'scale-{size}.db'}"
        migrate(url)
        yield url
    else:
        with postgres_schema(f"vidpipe_bench_scale_{size}") as url:
            yield url


class Target:
    """vidpipe's app on one database, and the requests to time."""

    def __init__(self, database_url: str, media_root: Path, middle: str) -> None:
        import logging

        from webapp import create_app
        from webapp.config import Settings

        settings = Settings(database_url=database_url, media_root=media_root,
                            redis_url=REDIS_URL, queue_name=f"bench-scale-{uuid.uuid4().hex}")
        self.app = create_app(settings)
        logging.getLogger("webapp").setLevel(logging.WARNING)
        self.client = self.app.test_client()
        self.database_url = database_url
        poll = f"/api/v1/videos/{middle}/reprocess"
        etag = self.client.get(poll).headers["ETag"]
        self.requests = {
            "list_api": ("/api/v1/videos?page=1&page_size=10", {}, 200),
            "list_ui": ("/", {}, 200),
            "poll": (poll, {}, 200),
            "poll_304": (poll, {"If-None-Match": etag}, 304),
            "row_ui": (f"/videos/{middle}/row", {"HX-Request": "true"}, 200),
        }

    def time(self, name: str, count: int) -> list[float]:
        path, headers, status = self.requests[name]
        took = []
        for _ in range(count):
            t0 = time.perf_counter()
            resp = self.client.get(path, headers=headers)
            resp.get_data()
            took.append(time.perf_counter() - t0)
            if resp.status_code != status:
                raise RuntimeError(f"{name}: {resp.status_code} {resp.get_data()[:300]!r}")
        return took

    def statements(self, name: str) -> int:
        path, headers, _ = self.requests[name]
        from webapp.db import statements_sent

        with statements_sent(self.database_url) as statements:
            self.client.get(path, headers=headers).get_data()
        return len(statements)


def measure_backend(backend: str, tmp: Path) -> dict:
    with contextlib.ExitStack() as stack:
        targets = {}
        for size in SIZES:
            url = stack.enter_context(database(backend, tmp, size))
            started = time.perf_counter()
            middle = fill(url, size)
            print(f"{backend}: {size} videos inserted in {time.perf_counter() - started:.1f} s",
                  flush=True)
            targets[size] = Target(url, tmp / "media", middle)
        names = list(targets[SMALL].requests)
        for target in targets.values():  # warm-up
            for name in names:
                target.time(name, 10)
        rounds: dict[int, dict[str, list[float]]] = {s: {n: [] for n in names} for s in SIZES}
        for run in range(RUNS):
            for name in names:
                # The sizes take turns request by request (in alternating order), so that the
                # drift of a shared VM's speed hits all of them alike.
                took: dict[int, list[float]] = {size: [] for size in SIZES}
                for i in range(REQUESTS):
                    for size in SIZES if (run + i) % 2 == 0 else reversed(SIZES):
                        took[size] += targets[size].time(name, 1)
                for size in SIZES:
                    rounds[size][name].append(statistics.median(took[size]) * 1000)
        out: dict = {}
        for name in names:
            section = {f"{size}_ms": spread(rounds[size][name]) for size in SIZES}
            med = {size: section[f"{size}_ms"]["median"] for size in SIZES}
            section["ratio_10000_vs_10"] = round(med[BIG] / med[SMALL], 3)
            section["ratio_10000_vs_20"] = round(med[BIG] / med[20], 3)
            section["statements"] = {size: targets[size].statements(name) for size in SIZES}
            out[name] = section
            print(f"{backend} {name:9} " + "  ".join(f"{s}: {med[s]:6.2f} ms" for s in SIZES)
                  + f"  ratio {section['ratio_10000_vs_10']:.2f}"
                  f" (vs 20: {section['ratio_10000_vs_20']:.2f})", flush=True)
        out["plans"] = plans(targets[BIG].database_url)
        return out


def plans(database_url: str) -> dict[str, list[str]]:
    """How the big database answers the list's queries (for the record)."""
    from sqlalchemy import func, select

    from webapp.db import get_engine
    from webapp.models import Video
    from webapp.services import progress
    from webapp.services.progress import queries as progress_queries

    engine = get_engine(database_url)
    page = select(Video.id).order_by(Video.created_at.desc(), Video.id).limit(20)
    with engine.connect() as conn:
        ids = list(conn.scalars(page))
    count = select(func.count()).select_from(Video)
    middle = ids[len(ids) // 2]
    queries = {"count": count, "page": page,
               "page_progress": progress_queries._PAGE_QUERY.params(video_ids=ids),
               "poll_tag": progress.TAG_QUERY.params(video_id=middle),
               "poll_progress": progress_queries._PROGRESS_QUERY.params(video_id=middle)}
    prefix = "EXPLAIN QUERY PLAN " if engine.dialect.name == "sqlite" else "EXPLAIN "
    out = {}
    with engine.connect() as conn:
        for name, stmt in queries.items():
            sql = str(stmt.compile(engine, compile_kwargs={"literal_binds": True}))
            rows = conn.exec_driver_sql(prefix + sql.replace("%", "%%")
                                        if engine.dialect.name == "postgresql" else prefix + sql)
            out[name] = [" ".join(str(c) for c in row) for row in rows]
    return out


def main() -> int:
    from redis import Redis

    Redis.from_url(REDIS_URL).ping()
    load_before = loadavg()
    started = time.time()
    details: dict = {}
    with workdir("scale") as tmp:
        for backend in ("sqlite", "postgresql"):
            details[backend] = measure_backend(backend, tmp)
    endpoints = ("list_api", "list_ui", "poll", "poll_304", "row_ui")
    worst, worst_of = max((details[b][e][SAME_ANSWER[e]], f"{b} {e}")
                          for b in details for e in endpoints)
    raw_worst, raw_of = max((details[b][e]["ratio_10000_vs_10"], f"{b} {e}")
                            for b in details for e in endpoints)
    details["setup"] = {
        "requests": "Flask test client in this process (the app's own time)",
        "data": "each video: 1 completed task + 4 completed subtasks; bulk Core inserts",
        "sizes": list(SIZES), "rounds": RUNS, "requests_per_round": REQUESTS,
        "loadavg_before": load_before, "loadavg_after": loadavg(),
        "seconds": round(time.time() - started, 1),
    }
    summary = {b: {e: details[b][e]["ratio_10000_vs_10"] for e in endpoints}
               for b in ("sqlite", "postgresql")}
    details["ratios_10000_vs_10"] = summary
    Result(
        name="scale",
        title="Lists and polls with 10 000 videos vs 10 (SQLite and PostgreSQL)",
        target=f"10 000 / 10 ≤ {TARGET}× (answers of the same size)",
        measured=(f"worst ratio {worst:.2f}× ({worst_of}) against the same answer on 10 "
                  f"videos (library page: 20); against 10 videos for all: worst {raw_worst:.2f}× "
                  f"({raw_of}) (median of {RUNS} rounds)"),
        met=worst <= TARGET,
        details=details,
        notes=("ratios 10 000 / 10 by endpoint (library page: 10 rows vs 20): "
               + "; ".join(f"{b}: " + ", ".join(f"{e} {r:.2f}" for e, r in s.items())
                           for b, s in summary.items())
               + ". See docs/PERFORMANCE.md, section 6."),
    ).write()
    return 0


if __name__ == "__main__":
    run_main(main, "scale")
