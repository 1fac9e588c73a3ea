"""Upload memory: the web process's peak RSS while a 2 GB video is uploaded.

A real ~2 GB H.264 file (testsrc2 1080p, lossless x264, looped with `-stream_loop -c copy`;
cached in bench/.cache/, removed after the run unless BENCH_KEEP=1) is POSTed with `curl -F
file=@...` (curl streams it from disk) to /api/v1/videos of a real gunicorn started as the
Procfile does (`gunicorn -c gunicorn.conf.py wsgi:app`, here with WEB_WORKERS=2 gthread workers
of its default threads), with a temporary SQLite database migrated by alembic, a temporary
MEDIA_ROOT and MAX_UPLOAD_BYTES=4000000000. Every gunicorn process (master and workers) is
sampled every 50 ms from /proc/<pid>/status (VmRSS) during the upload, and each worker's VmHWM
(kernel high-water mark) is read at the end. Baseline in the same run: the same gunicorn idle
after a few small uploads. Also recorded: upload wall time and throughput, and how many bytes
the worker wrote (/proc/<pid>/io wchar) per byte of upload, i.e. whether the body is written to
disk once or twice. Every run starts a fresh gunicorn. BENCH_RUNS (3) runs; BENCH_UPLOAD_MB
(2147, i.e. 2 GiB) sets the upload size for trial runs; BENCH_APP_DIR runs gunicorn in another
copy of the app (e.g. a snapshot of an older webapp/, for a before/after comparison). MB = 10^6
bytes throughout. """

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from bench.common import Result, spread

ROOT = Path(__file__).resolve().parent.parent
APP_DIR = Path(os.environ.get("BENCH_APP_DIR") or ROOT)
CACHE = Path(__file__).resolve().parent / ".cache"
RUNS = int(os.environ.get("BENCH_RUNS") or 3)
KEEP = os.environ.get("BENCH_KEEP") == "1"
UPLOAD_BYTES = int(float(os.environ.get("BENCH_UPLOAD_MB") or 2147.483648) * 1_000_000)
TARGET_MB = 150.0
SAMPLE_EVERY = 0.05
WORKERS = 2
SMALL_UPLOADS = 4  # enough that both workers most likely served one before the idle reading
MB = 1_000_000


# -- media ----------------------------------------------------------------------------------

def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-y", "-loglevel", "error", *args], check=True)


def small_clip() -> Path:
    path = CACHE / "upload_small.mp4"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        ffmpeg("-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25", "-f", "lavfi",
               "-i", "sine=frequency=440:sample_rate=48000", "-t", "2", "-c:v", "libx264",
               "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest",
               str(path))
    return path


def big_video() -> Path:
    """A real H.264/AAC MP4 of at least UPLOAD_BYTES: a 20 s lossless 1080p seed, looped."""
    path = CACHE / f"upload_{UPLOAD_BYTES // MB}mb.mp4"
    if path.exists() and path.stat().st_size >= UPLOAD_BYTES:
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    seed = CACHE / "upload_seed.mp4"
    if not seed.exists():
        ffmpeg("-f", "lavfi", "-i", "testsrc2=size=1920x1080:rate=25", "-f", "lavfi",
               "-i", "sine=frequency=440:sample_rate=48000", "-t", "20", "-c:v", "libx264",
               "-preset", "ultrafast", "-qp", "0", "-pix_fmt", "yuv420p", "-c:a", "aac",
               "-shortest", str(seed))
    loops = -(-UPLOAD_BYTES // seed.stat().st_size)  # copies of the seed, rounded up
    partial = path.with_suffix(".part.mp4")
    ffmpeg("-stream_loop", str(loops - 1), "-i", str(seed), "-c", "copy", str(partial))
    os.replace(partial, path)
    return path


# -- /proc ----------------------------------------------------------------------------------

def status_kb(pid: int, field: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def wchar(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise RuntimeError(f"no wchar for {pid}")


def pss_kb(pid: int) -> int:
    """Proportional set size: shared pages split between the processes sharing them."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of the process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def mb(kb: int | float) -> float:
    return round(kb * 1024 / MB, 1)


class Sampler(threading.Thread):
    """VmRSS of the master and every worker, every SAMPLE_EVERY seconds, until stopped."""

    def __init__(self, master: int) -> None:
        super().__init__(daemon=True)
        self.master = master
        self.peak_kb: dict[int, int] = {}
        self.peak_total_kb = 0
        self.samples = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            total = 0
            for pid in [self.master, *children(self.master)]:
                rss = status_kb(pid, "VmRSS")
                if rss is None:
                    continue
                total += rss
                self.peak_kb[pid] = max(self.peak_kb.get(pid, 0), rss)
            self.peak_total_kb = max(self.peak_total_kb, total)
            self.samples += 1
            self.stopped.wait(SAMPLE_EVERY)


# -- gunicorn -------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def migrate(url: str) -> None:
    from alembic import command
    from alembic.config import Config

    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.attributes["database_url"] = url
    cfg.attributes["configure_logger"] = False
    command.upgrade(cfg, "head")


class Gunicorn:
    """`gunicorn -c gunicorn.conf.py wsgi:app` (the Procfile's web line) in a temp tree."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.media = base / "media"
        self.port = free_port()
        db = f"sqlite:///{base / 'vidpipe.db'}"
        migrate(db)
        env = {k: v for k, v in os.environ.items()
               if k not in ("API_TOKEN", "ADMIN_PASSWORD", "ALLOW_INSECURE")}
        env.update(HOST="127.0.0.1", PORT=str(self.port), WEB_WORKERS=str(WORKERS),
                   DATABASE_URL=db, MEDIA_ROOT=str(self.media),
                   MAX_UPLOAD_BYTES="4000000000",
                   REDIS_URL=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13"))
        self.log = open(base / "gunicorn.log", "wb")  # noqa: SIM115 (closed in stop)
        gunicorn = Path(sys.executable).parent / "gunicorn"
        self.proc = subprocess.Popen([str(gunicorn), "-c", "gunicorn.conf.py", "wsgi:app"],
                                     cwd=APP_DIR, env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited: {self.tail()}")
            if len(children(self.proc.pid)) == WORKERS:
                try:
                    with urllib.request.urlopen(f"{self.url}/api/openapi.json", timeout=5):
                        return
                except OSError:
                    pass
            time.sleep(0.2)
        raise RuntimeError(f"gunicorn did not start: {self.tail()}")

    def tail(self) -> str:
        self.log.flush()
        return (self.base / "gunicorn.log").read_text(errors="replace")[-2000:]

    def workers(self) -> list[int]:
        return children(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def curl_upload(url: str, path: Path) -> dict:
    """POST the file as multipart field `file`; curl streams it from disk."""
    out = subprocess.run(
        ["curl", "-sS", "-o", "-", "-w", "\n%{http_code} %{time_total} %{size_upload}",
         "-F", f"file=@{path};type=video/mp4", f"{url}/api/v1/videos"],
        check=True, capture_output=True, text=True)
    body, _, stats = out.stdout.rpartition("\n")
    code, total, sent = stats.split()
    if code != "201":
        raise RuntimeError(f"upload answered {code}: {body[:500]}")
    return {"seconds": float(total), "sent_bytes": int(float(sent)), "body": json.loads(body)}


# -- one run --------------------------------------------------------------------------------

def one_run(big: Path, small: Path, index: int) -> dict:
    base = Path(tempfile.mkdtemp(prefix="vidpipe-upmem-"))
    server = None
    try:
        server = Gunicorn(base)
        for _ in range(SMALL_UPLOADS):
            curl_upload(server.url, small)
        time.sleep(0.5)
        workers = server.workers()
        idle = {pid: status_kb(pid, "VmRSS") or 0 for pid in workers}
        idle_master = status_kb(server.proc.pid, "VmRSS") or 0
        os.sync()  # start with no dirty pages left from the setup or an earlier run
        written_before = {pid: wchar(pid) for pid in workers}
        cpu_before = {pid: cpu_seconds(pid) for pid in workers}
        free_before = shutil.disk_usage(base).free

        sampler = Sampler(server.proc.pid)
        min_free = free_before
        sampler.start()
        result: dict = {}
        uploader = threading.Thread(
            target=lambda: result.update(curl_upload(server.url, big)), daemon=True)
        uploader.start()
        while uploader.is_alive():
            min_free = min(min_free, shutil.disk_usage(base).free)
            uploader.join(0.25)
        sampler.stopped.set()
        sampler.join()
        if "body" not in result:
            raise RuntimeError(f"the upload failed; server log: {server.tail()}")

        hwm = {pid: status_kb(pid, "VmHWM") or 0 for pid in server.workers()}
        written = {pid: wchar(pid) - written_before.get(pid, 0) for pid in server.workers()}
        cpu = {pid: cpu_seconds(pid) - cpu_before.get(pid, 0) for pid in server.workers()}
        pss = sum(pss_kb(pid) for pid in [server.proc.pid, *server.workers()])
        video = result["body"]
        stored = server.media / "videos" / video["id"] / "source.mp4"
        staging = server.media / "staging"
        leftovers = list(staging.iterdir()) if staging.exists() else []
        if stored.stat().st_size != big.stat().st_size or leftovers:
            raise RuntimeError(f"stored {stored.stat().st_size} bytes, leftovers {leftovers}")
        worker_peaks = {pid: kb for pid, kb in sampler.peak_kb.items() if pid in idle}
        run = {
            "peak_worker_mb": mb(max(max(worker_peaks.values()), max(hwm.values()))),
            "peak_worker_sampled_mb": mb(max(worker_peaks.values())),
            "vmhwm_worker_mb": {str(pid): mb(kb) for pid, kb in hwm.items()},
            "peak_master_mb": mb(sampler.peak_kb.get(server.proc.pid, 0)),
            "peak_all_processes_mb": mb(sampler.peak_total_kb),
            "pss_all_processes_after_mb": mb(pss),
            "idle_worker_mb": mb(max(idle.values())),
            "idle_workers_mb": {str(pid): mb(kb) for pid, kb in idle.items()},
            "idle_master_mb": mb(idle_master),
            "samples": sampler.samples,
            "upload_bytes": result["sent_bytes"],
            "file_bytes": big.stat().st_size,
            "wall_s": round(result["seconds"], 2),
            "throughput_mb_s": round(result["sent_bytes"] / MB / result["seconds"], 1),
            "worker_cpu_s": round(max(cpu.values()), 2),
            "worker_wrote_bytes": max(written.values()),
            "writes_per_upload": round(max(written.values()) / big.stat().st_size, 2),
            "peak_extra_disk_mb": round((free_before - min_free) / MB),
            "duration_s": video.get("duration"),
        }
        print(f"  run {index}: peak {run['peak_worker_mb']} MB (idle {run['idle_worker_mb']}), "
              f"{run['wall_s']} s, {run['throughput_mb_s']} MB/s, worker CPU "
              f"{run['worker_cpu_s']} s, body written "
              f"{run['writes_per_upload']}x, peak extra disk {run['peak_extra_disk_mb']} MB",
              flush=True)
        return run
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    small = small_clip()
    started = time.perf_counter()
    big = big_video()
    made = time.perf_counter() - started
    print(f"upload_memory: {big.stat().st_size / MB:.0f} MB file ({made:.0f} s to make), "
          f"{RUNS} runs", flush=True)
    try:
        runs = [one_run(big, small, i + 1) for i in range(RUNS)]
    finally:
        if not KEEP:
            big.unlink(missing_ok=True)

    def pick(key: str) -> list[float]:
        return [float(r[key]) for r in runs]

    peak, idle = spread(pick("peak_worker_mb")), spread(pick("idle_worker_mb"))
    writes = statistics.median(pick("writes_per_upload"))
    size_gb = big.stat().st_size / 1e9 if big.exists() else runs[0]["file_bytes"] / 1e9
    met = peak["median"] < TARGET_MB and peak["max"] < TARGET_MB
    times = "once" if writes < 1.5 else "twice" if writes < 2.5 else f"{writes:.1f}x"
    measured = (f"peak {peak['median']:.0f} MB, idle {idle['median']:.0f} MB "
                f"(worker RSS, median of {RUNS}; max peak {peak['max']:.0f} MB); "
                f"{size_gb:.2f} GB in {statistics.median(pick('wall_s')):.1f} s, "
                f"body written to disk {times}")
    Result(
        name="upload_memory",
        title="Upload memory (2 GB upload)",
        target="peak RSS < 150 MB",
        measured=measured,
        met=met,
        details={
            "peak_worker_mb": peak,
            "idle_worker_mb": idle,
            "peak_master_mb": spread(pick("peak_master_mb")),
            "peak_all_processes_mb": spread(pick("peak_all_processes_mb")),
            "pss_all_processes_after_mb": spread(pick("pss_all_processes_after_mb")),
            "wall_s": spread(pick("wall_s")),
            "throughput_mb_s": spread(pick("throughput_mb_s")),
            "worker_cpu_s": spread(pick("worker_cpu_s")),
            "writes_per_upload": spread(pick("writes_per_upload")),
            "peak_extra_disk_mb": spread(pick("peak_extra_disk_mb")),
            "file_bytes": runs[0]["file_bytes"],
            "sample_interval_s": SAMPLE_EVERY,
            "gunicorn": f"{WORKERS} gthread workers (gunicorn.conf.py)",
            "runs": runs,
        },
        notes=("MB = 10^6 bytes. Peak = the larger of the 50 ms VmRSS samples and the "
               "kernel's VmHWM of the worker that served the upload; idle = the same "
               "workers after small uploads. peak_all_processes sums the RSS of the master "
               "and both workers (shared pages counted in each); pss_all_processes_after is "
               "their PSS total just after the upload. writes_per_upload = bytes the worker wrote "
               "(/proc/<pid>/io wchar) / file size. peak_extra_disk is the drop in free "
               "space on the filesystem of MEDIA_ROOT and TMPDIR during the upload (other "
               "processes on the machine can add to it)."
               + ("" if met else " Target missed: see docs/PERFORMANCE.md, section 5.")),
    ).write()


if __name__ == "__main__":
    main()
