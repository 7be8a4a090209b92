"""A PostgreSQL server of a test's own, to restart, stop or upgrade at will without
touching the shared one other tests (and other test processes) use."""

from __future__ import annotations

import glob
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def _bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivatePostgres:
    """initdb + pg_ctl in a temporary directory, as the `postgres` user (PostgreSQL
    refuses to run as root), on a free port, trust auth, fsync off."""

    def __init__(
        self, *, host: str = "127.0.0.1", netns: str | None = None, clients: str | None = None
    ) -> None:
        """`host`: the address to listen on; `netns`: a network namespace to run in;
        `clients`: a network (CIDR) trusted to connect besides loopback."""
        # Not under pytest's tmp_path: the postgres user cannot reach into root's 0700
        # directories.
        self.root = Path(tempfile.mkdtemp(prefix="gq-pg-"))
        self.data = self.root / "data"
        self.host = host
        self.netns = netns
        self.clients = clients
        self.port = free_port() if netns is None else 5432
        self.url = f"postgresql://postgres@{host}:{self.port}/postgres"

    @staticmethod
    def missing() -> str | None:
        """Why a private server cannot run here, or None."""
        for tool in ("initdb", "pg_ctl"):
            if _bin(tool) is None:
                return f"{tool} not found"
        if shutil.which("runuser") is None:
            return "runuser not found"
        return None

    def _run(self, *args: str, timeout: float = 60) -> None:
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        subprocess.run(
            [*prefix, "runuser", "-u", "postgres", "--", *args],
            check=True,
            capture_output=True,
            timeout=timeout,
        )

    def _options(self) -> str:
        return f"-p {self.port} -k {self.root} -c listen_addresses={self.host} -c fsync=off"

    def start(self) -> None:
        if not self.data.exists():
            shutil.chown(self.root, "postgres")
            self._run(str(_bin("initdb")), "-D", str(self.data), "-A", "trust", "-U", "postgres")
            if self.clients:
                with (self.data / "pg_hba.conf").open("a") as hba:
                    hba.write(f"host all all {self.clients} trust\n")
        self._ctl("start")

    def restart(self) -> float:
        """Restart in fast mode (every connection is cut); returns the seconds it took."""
        t0 = time.monotonic()
        self._ctl("restart", "-m", "fast")
        return time.monotonic() - t0

    def stop(self) -> None:
        """Stop the server and remove its files."""
        if self.data.exists():
            self._ctl("stop", "-m", "immediate", check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def _ctl(self, action: str, *extra: str, check: bool = True) -> None:
        try:
            self._run(
                str(_bin("pg_ctl")),
                "-D",
                str(self.data),
                "-o",
                self._options(),
                "-l",
                str(self.root / "server.log"),
                "-w",
                action,
                *extra,
            )
        except subprocess.CalledProcessError:
            if check:
                raise
