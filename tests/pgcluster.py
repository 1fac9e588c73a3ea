"""A private PostgreSQL cluster for one test: its own folder, port and processes.

Tests that stop and restart PostgreSQL must never touch the shared server on :5432, so
they start a cluster of their own here. initdb and the server refuse to run as root: as
root, they run as the `postgres` user (runuser) in a folder that user owns.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.helpers import free_port


def _pg_bin() -> Path:
    """PG_BIN, else the newest server Debian installs (scripts/system-deps.sh postgresql)."""
    if os.environ.get("PG_BIN"):
        return Path(os.environ["PG_BIN"])
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    return found[-1].parent if found else Path("/usr/lib/postgresql/15/bin")


PG_BIN = _pg_bin()
RUN_AS = "postgres"  # the system user initdb/postgres run as when the tests run as root


class PgCluster:
    """One initdb'd cluster on <host>:<port> (127.0.0.1 and a free port by default), trust
    auth, in a temporary folder; `wrap` prefixes its commands (e.g. `ip netns exec NS`, to
    run it on another test host)."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = None,
                 wrap: tuple[str, ...] = (), allow: str | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="vidpipe-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self.host = host
        self.port = port or free_port()
        self.wrap = wrap
        self.allow = allow  # a network (e.g. 10.1.2.0/24) whose clients are trusted too
        self.url = f"postgresql+psycopg://postgres@{host}:{self.port}/postgres"
        self._as_root = os.geteuid() == 0
        if self._as_root:
            user = pwd.getpwnam(RUN_AS)
            os.chown(self.dir, user.pw_uid, user.pw_gid)
            self.dir.chmod(0o700)

    def _run(self, tool: str, *args: str, timeout: float = 60) -> None:
        cmd = [str(PG_BIN / tool), *args]
        if self._as_root:
            cmd = ["runuser", "-u", RUN_AS, "--", *cmd]
        cmd = [*self.wrap, *cmd]
        done = subprocess.run(cmd, cwd=self.dir, capture_output=True, text=True,
                              timeout=timeout, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args)} failed ({done.returncode}):\n"
                               f"{done.stdout}\n{done.stderr}\n{self.log_tail()}")

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres",
                  "-E", "UTF8", "--no-sync")
        if self.allow:
            with open(self.data / "pg_hba.conf", "a") as hba:
                hba.write(f"host all all {self.allow} trust\n")

    def start(self) -> None:
        # Sockets in the cluster's own folder; fsync off: a test cluster need not survive
        # a power cut, and its writes should not compete with the shared server's.
        options = (f"-p {self.port} -k {self.dir} -c listen_addresses={self.host} "
                   "-c fsync=off -c full_page_writes=off -c synchronous_commit=off")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options,
                  "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (its clients are disconnected), waiting until it is down."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def remove(self) -> None:
        """Stop the server if it runs (immediately if a fast stop fails), then delete
        every file of the cluster."""
        if self.running():
            try:
                self.stop("fast")
            except (RuntimeError, subprocess.TimeoutExpired):
                with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                    self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def private_cluster() -> Iterator[PgCluster]:
    """A started private cluster; stopped and deleted on exit, whatever happened."""
    cluster = PgCluster()
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        cluster.remove()
