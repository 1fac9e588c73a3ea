"""Separate hosts on one machine, for tests and benchmarks of workers on other hosts.

A `Site` is a small private network made of Linux network namespaces (root only):
- the **server** host, one namespace holding a bridge with the server's address, on which
  a private PostgreSQL (initdb into a temporary folder, run as the `postgres` user), a
  private redis-server and the web app (gunicorn, as `make run` starts it) listen;
- **worker** hosts, each a namespace of its own joined to the bridge by a veth pair, whose
  workers also run in a mount namespace of their own where the server's files (its
  MEDIA_ROOT, the PostgreSQL cluster) and the other workers' MEDIA_ROOTs are hidden under
  empty read-only tmpfs mounts: a worker host sees nothing of another host's disk;
- the test process reaches the server over one more veth pair (the "client" link).

Every host resolves the server as `web-host` (`ip netns exec` mounts
/etc/netns/<namespace>/hosts over /etc/hosts), so workers use SERVER_URL=http://web-host:5000
as on real machines. Only addresses of this private subnet are used. `Site.close()` (or
leaving the `with` block) stops every process it started, removes the PostgreSQL cluster,
the namespaces, their links and /etc/netns entries, whatever happened before.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import requests

from tests import cleanup
from tests.pgcluster import PgCluster
from tests.procs import REDIS_SERVER

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SERVER_NAME = "web-host"
WEB_PORT = 5000
WORKER_TOKEN = "multi-host-worker-token-0123456789"
API_TOKEN = "multi-host-api-token-0123456789"
ADMIN_PASSWORD = "multi-host-admin-0123456789"
REDIS_PASSWORD = "multi-host-redis-0123456789"  # as docs/DEPLOY.md says: Redis on a network
# Settings of ours that must not leak from the test run's environment into the hosts'.
_OWN = ("DATABASE_URL", "REDIS_URL", "MEDIA_ROOT", "SERVER_URL", "WORKER_TOKEN", "WORKER_NAME",
        "API_TOKEN", "ADMIN_PASSWORD", "ALLOWED_HOSTS", "HOST", "PORT", "QUEUE_NAME")
# Run in a worker's new mount namespace: hide the listed folders, then become the worker.
_HIDE = ('for d in $VIDPIPE_HIDE; do mkdir -p "$d" && '
         'mount -t tmpfs -o ro,size=64k,mode=0555 hidden "$d" || exit 97; done; exec "$@"')


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30,
                          check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")
    return done


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 in 10.0.0.0/8 that no interface or route of this machine uses."""
    used = [ipaddress.ip_network(word, strict=False)
            for line in _ip("-4", "route", "show", "table", "all").stdout.splitlines()
            for word in line.split()[:1] if "/" in word or word.count(".") == 3]
    for _ in range(100):
        net = ipaddress.ip_network(f"10.{secrets.randbelow(54) + 200}."
                                   f"{secrets.randbelow(255)}.0/24")
        if not any(net.overlaps(other) for other in used):
            return net
    raise RuntimeError("no free private subnet for the test hosts")


@dataclass
class Host:
    name: str
    namespace: str
    address: str
    link: str  # its interface inside its namespace
    port: str  # the other end of its link, on the server's bridge
    media_root: Path | None = None
    procs: list[subprocess.Popen] = field(default_factory=list)

    def link_down(self) -> None:
        """Cut the host off the network (as a pulled cable): packets are lost, nothing is
        closed."""
        _ip("-n", self.namespace, "link", "set", self.link, "down")

    def link_up(self) -> None:
        _ip("-n", self.namespace, "link", "set", self.link, "up")


class Site:
    """The server host, worker hosts and the links between them (see the module's text)."""

    def __init__(self, base: Path) -> None:
        if os.geteuid() != 0:
            raise RuntimeError("separate test hosts need root (network and mount namespaces)")
        self.base = base
        self.run = secrets.token_hex(2)
        self.hosts: dict[str, Host] = {}
        self.pg: PgCluster | None = None
        self.logs = base / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self._files: list[IO] = []
        self.web_env: dict[str, str] = {}
        self.client_link = f"vp{self.run}cli"
        self.api = requests.Session()
        self.api.headers["Authorization"] = f"Bearer {API_TOKEN}"
        self.media_root = base / "web" / "media"
        self.media_root.mkdir(parents=True)
        try:
            self.subnet = _free_subnet()
            self._addresses = iter(self.subnet.hosts())
            self.server = self._add("srv")
            srv = self.server.namespace
            _ip("-n", srv, "link", "add", "br0", "type", "bridge")
            _ip("-n", srv, "addr", "add", f"{self.server.address}/24", "dev", "br0")
            _ip("-n", srv, "link", "set", "br0", "up")
            self._connect(None, str(next(self._addresses)))
        except BaseException:
            self.close()
            raise
        self.url = f"http://{self.server.address}:{WEB_PORT}"

    # -- the network ----------------------------------------------------------------------

    def _add(self, name: str) -> Host:
        namespace = f"vp{self.run}-{name}"
        _ip("netns", "add", namespace)
        host = Host(name, namespace, str(next(self._addresses)), "eth0", "")
        self.hosts[name] = host
        _ip("-n", namespace, "link", "set", "lo", "up")
        etc = Path("/etc/netns") / namespace
        etc.mkdir(parents=True, exist_ok=True)
        server = self.hosts["srv"].address if "srv" in self.hosts else host.address
        (etc / "hosts").write_text(f"127.0.0.1 localhost\n::1 localhost\n"
                                   f"{server} {SERVER_NAME}\n")
        return host

    def _connect(self, host: Host | None, address: str) -> None:
        """A veth pair from the server's bridge to `host` (None: to this process's own
        namespace, the client link), its far end with `address`."""
        srv = self.server.namespace
        name = host.name if host else "cli"
        port, far = f"vp{self.run}{name}b", f"vp{self.run}{name}"
        _ip("link", "add", far, "type", "veth", "peer", "name", port)
        _ip("link", "set", port, "netns", srv)
        _ip("-n", srv, "link", "set", port, "master", "br0")
        _ip("-n", srv, "link", "set", port, "up")
        if host is None:
            _ip("addr", "add", f"{address}/24", "dev", far)
            _ip("link", "set", far, "up")
            return
        _ip("link", "set", far, "netns", host.namespace)
        _ip("-n", host.namespace, "link", "set", far, "name", host.link)
        _ip("-n", host.namespace, "addr", "add", f"{address}/24", "dev", host.link)
        host.port = port
        host.link_up()

    def add_worker_host(self, name: str) -> Host:
        host = self._add(name)
        try:
            self._connect(host, host.address)
        except BaseException:
            self.close()
            raise
        host.media_root = self.base / name / "media"
        host.media_root.mkdir(parents=True)
        return host

    def shape(self, host: Host, rate: str) -> None:
        """Limit the host's link to `rate` (e.g. "16mbit") both ways."""
        for namespace, dev in ((host.namespace, host.link), (self.server.namespace, host.port)):
            subprocess.run(["ip", "netns", "exec", namespace, "tc", "qdisc", "replace", "dev",
                            dev, "root", "tbf", "rate", rate, "burst", "64kb", "latency",
                            "200ms"], check=True, capture_output=True, timeout=30)

    def unshape(self, host: Host) -> None:
        for namespace, dev in ((host.namespace, host.link), (self.server.namespace, host.port)):
            subprocess.run(["ip", "netns", "exec", namespace, "tc", "qdisc", "del", "dev", dev,
                            "root"], capture_output=True, timeout=30, check=False)

    # -- processes ------------------------------------------------------------------------

    def _env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _OWN}
        return {**env, "DATABASE_URL": f"postgresql+psycopg://postgres@{SERVER_NAME}:5432/"
                                       "postgres",
                "REDIS_URL": f"redis://:{REDIS_PASSWORD}@{SERVER_NAME}:6379/0",
                "WORKER_TOKEN": WORKER_TOKEN,
                "PYTHONUNBUFFERED": "1", **extra}

    def spawn(self, host: Host, cmd: list[str], log: str, env: dict[str, str]
              ) -> subprocess.Popen:
        """Start `cmd` on `host`, in a session of its own, its output in logs/<log>."""
        out = open(self.logs / log, "a")  # noqa: SIM115 - closed in close()
        self._files.append(out)
        proc = subprocess.Popen(["ip", "netns", "exec", host.namespace, *cmd], cwd=PROJECT_ROOT,
                                stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        host.procs.append(proc)
        return proc

    def start_server(self) -> None:
        """PostgreSQL, Redis and the web app on the server host, the schema migrated."""
        srv = self.server
        self.pg = PgCluster(host=srv.address, port=5432,
                            wrap=("ip", "netns", "exec", srv.namespace), allow=str(self.subnet))
        self.pg.init()
        self.pg.start()
        self.redis = self.spawn(srv, [*REDIS_SERVER, "--bind", srv.address, "--port", "6379",
                                      "--requirepass", REDIS_PASSWORD, "--save", "",
                                      "--appendonly", "no", "--dir", str(self.base)],
                                "redis.log", self._env())
        self._wait(lambda: subprocess.run(
            ["redis-cli", "-h", srv.address, "ping"], capture_output=True, text=True,
            timeout=10, env={**os.environ, "REDISCLI_AUTH": REDIS_PASSWORD}
        ).stdout.strip() == "PONG", 30, "the private Redis")
        migrate = subprocess.run(["ip", "netns", "exec", srv.namespace, sys.executable, "-m",
                                  "alembic", "upgrade", "head"], cwd=PROJECT_ROOT,
                                 env=self._env(), capture_output=True, text=True, timeout=180)
        if migrate.returncode != 0:
            raise RuntimeError(f"migrations failed: {migrate.stderr[-2000:]}")
        self.web_env = self._env(
            HOST=srv.address, PORT=str(WEB_PORT), MEDIA_ROOT=str(self.media_root),
            ALLOWED_HOSTS=f"{SERVER_NAME},{srv.address}", API_TOKEN=API_TOKEN,
            ADMIN_PASSWORD=ADMIN_PASSWORD, WEB_WORKERS="2")
        self.start_web()

    def start_web(self) -> None:
        self.web = self.spawn(self.server, [sys.executable, "-m", "gunicorn", "-c",
                                            "gunicorn.conf.py", "wsgi:app"], "web.log",
                              self.web_env)
        self._wait(self._healthy, 60, "the web app answering /healthz")

    def kill_web(self) -> None:
        """The web host's process dies at once (SIGKILL to gunicorn and its workers)."""
        sessions = [self.web.pid]
        cleanup.kill_sessions(sessions)
        self.web.wait(10)
        left = cleanup.wait_sessions_gone(sessions, 10)
        assert not left, left

    def _healthy(self) -> bool:
        if self.web.poll() is not None:
            raise RuntimeError("the web app exited:\n" + self.log_tail("web.log"))
        try:
            return requests.get(self.url + "/healthz", timeout=5).status_code == 200
        except requests.RequestException:
            return False

    def start_worker(self, host: Host, **extra: str) -> subprocess.Popen:
        """`python -m jobs.worker` (the Procfile's worker) on `host` with SERVER_URL, in a
        mount namespace where no other host's files can be seen."""
        hidden = [self.media_root.parent, *(h.media_root for h in self.hosts.values()
                                            if h.media_root and h is not host)]
        if self.pg:
            hidden.append(self.pg.dir)
        env = self._env(SERVER_URL=f"http://{SERVER_NAME}:{WEB_PORT}", WORKER_NAME=host.name,
                        MEDIA_ROOT=str(host.media_root),
                        VIDPIPE_HIDE=" ".join(str(p) for p in hidden), **extra)
        cmd = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", _HIDE, "sh",
               sys.executable, "-m", "jobs.worker"]
        return self.spawn(host, cmd, f"worker-{host.name}.log", env)

    def sees(self, host: Host, path: Path) -> list[str]:
        """What a process of `host`'s workers finds in `path` (their mount namespace)."""
        hidden = [self.media_root.parent, *(h.media_root for h in self.hosts.values()
                                            if h.media_root and h is not host)]
        if self.pg:
            hidden.append(self.pg.dir)
        done = subprocess.run(
            ["ip", "netns", "exec", host.namespace, "unshare", "--mount", "--propagation",
             "private", "--", "sh", "-c", _HIDE, "sh", "ls", "-A", str(path)], timeout=30,
            capture_output=True, text=True, env={**os.environ, "VIDPIPE_HIDE": " ".join(
                str(p) for p in hidden)}, check=False)
        return done.stdout.split() if done.returncode == 0 else [f"error: {done.stderr}"]

    def stop_workers(self, host: Host) -> None:
        procs = [p for p in host.procs if p.poll() is None]
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(20)
        cleanup.kill_sessions([p.pid for p in procs])
        cleanup.wait_sessions_gone([p.pid for p in procs], 10)
        host.procs = [p for p in host.procs if p not in procs]

    def log_tail(self, name: str, chars: int = 3000) -> str:
        try:
            return (self.logs / name).read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def failure_report(self, chars: int = 2500) -> str:
        """The tail of every host's log, the workers' last (what a failed test shows)."""
        names = sorted(p.name for p in self.logs.iterdir())
        names.sort(key=lambda n: n.startswith("worker-"))
        return "\n".join(f"--- {n} (tail) ---\n{self.log_tail(n, chars)}" for n in names)

    def logs_text(self, name: str) -> str:
        try:
            return (self.logs / name).read_text(errors="replace")
        except OSError:
            return ""

    @staticmethod
    def _wait(predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.2)
        raise TimeoutError(f"{what} did not come up within {timeout:.0f} s")

    # -- the end --------------------------------------------------------------------------

    def close(self) -> None:
        """Stop everything this site started and remove every trace of it."""
        sessions = [p.pid for h in self.hosts.values() for p in h.procs]
        for pid in sessions:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGTERM)
        left = cleanup.wait_sessions_gone(sessions, 15)
        if left:
            cleanup.kill_sessions(sessions)
            cleanup.wait_sessions_gone(sessions, 10)
        for h in self.hosts.values():
            for proc in h.procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5)
        if self.pg:
            self.pg.remove()
        for out in self._files:
            out.close()
        _ip("link", "del", self.client_link, check=False)
        for host in list(self.hosts.values()):
            _ip("netns", "del", host.namespace, check=False)
            shutil.rmtree(Path("/etc/netns") / host.namespace, ignore_errors=True)

    def __enter__(self) -> Site:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def leftovers() -> list[str]:
    """Namespaces of sites that were not closed (a test run must leave none)."""
    done = _ip("netns", "list", check=False)
    return [line.split()[0] for line in done.stdout.splitlines()
            if line.startswith("vp") and "-" in line.split()[0]]
