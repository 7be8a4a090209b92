"""Hosts on one machine: Linux network namespaces joined by veth pairs to a bridge in a
"services" namespace. Every address lives on those veth pairs (10.77.0.0/24) inside the
namespaces the test made; the test removes them all afterwards. Needs root and iproute2.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

SUBNET = "10.77.0"
SERVICES_IP = f"{SUBNET}.1"
ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "multihost-test"
DB_URL = f"postgresql://postgres:{PASSWORD}@{SERVICES_IP}:5432/postgres"
BROKER_URL = f"redis://:{PASSWORD}@{SERVICES_IP}:6379/0"
GQ = [sys.executable, "-m", "genqueue.cli"]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def unavailable() -> str | None:
    """Why namespaces cannot be made here, or None."""
    if shutil.which("ip") is None:
        return "iproute2 (ip) not found"
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"gq-probe-{os.getpid()}"
    try:
        _ip("netns", "add", probe)
        _ip("netns", "del", probe)
    except (subprocess.CalledProcessError, OSError) as exc:
        return f"cannot create a network namespace: {exc}"
    return None


@dataclass
class Hosts:
    """A services host and `names` other hosts, each a namespace with one address."""

    names: list[str]
    prefix: str = field(default_factory=lambda: f"gq{os.getpid() % 100000}")
    addresses: dict[str, str] = field(default_factory=dict)

    def ns(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    def create(self) -> None:
        svc = self.ns("svc")
        _ip("netns", "add", svc)
        _ip("-n", svc, "link", "set", "lo", "up")
        _ip("-n", svc, "link", "add", "br0", "type", "bridge")
        _ip("-n", svc, "addr", "add", f"{SERVICES_IP}/24", "dev", "br0")
        _ip("-n", svc, "link", "set", "br0", "up")
        self.addresses["svc"] = SERVICES_IP
        for i, host in enumerate(self.names, start=10):
            ns = self.ns(host)
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip(
                "link",
                "add",
                "eth0",
                "netns",
                ns,
                "type",
                "veth",
                "peer",
                "name",
                f"p{i}",
                "netns",
                svc,
            )
            _ip("-n", svc, "link", "set", f"p{i}", "master", "br0", "up")
            _ip("-n", ns, "addr", "add", f"{SUBNET}.{i}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            self.addresses[host] = f"{SUBNET}.{i}"

    def exec(self, host: str) -> list[str]:
        """The command prefix that runs a command on `host`."""
        return ["ip", "netns", "exec", self.ns(host)]

    def link(self, host: str, up: bool) -> None:
        """Plug or unplug a host's cable (its veth)."""
        _ip("-n", self.ns(host), "link", "set", "eth0", "up" if up else "down")

    def pids(self, host: str) -> list[int]:
        out = subprocess.run(
            ["ip", "netns", "pids", self.ns(host)], capture_output=True, text=True, check=False
        ).stdout.split()
        return [int(p) for p in out]

    def kill_all(self, host: str) -> int:
        """SIGKILL every process on a host, as when it loses power; returns how many."""
        out = subprocess.run(
            ["ip", "netns", "pids", self.ns(host)], capture_output=True, text=True, check=False
        ).stdout.split()
        for pid in out:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        return len(out)

    def destroy(self) -> None:
        for host in ["svc", *self.names]:
            self.kill_all(host)
            subprocess.run(["ip", "netns", "del", self.ns(host)], capture_output=True, check=False)


class Deployment:
    """genqueue on `Hosts`: Redis (with a password), PostgreSQL and the reconciler on the
    services host; every process configured by environment only (`env` adds to the two
    URLs)."""

    def __init__(self, net: Hosts, workdir: Path, env: dict[str, str]) -> None:
        from tests.reliability.cluster import redis_server_binary
        from tests.services import PrivatePostgres

        self.net = net
        self.workdir = workdir
        self.env = {"GENQUEUE_DATABASE_URL": DB_URL, "GENQUEUE_BROKER_URL": BROKER_URL, **env}
        self.pg = PrivatePostgres(host=SERVICES_IP, netns=net.ns("svc"), clients=f"{SUBNET}.0/24")
        self.redis_cmd = [
            redis_server_binary(), "--bind", SERVICES_IP, "--port", "6379",
            "--requirepass", PASSWORD, "--save", "", "--appendonly", "no",
        ]  # fmt: skip
        self.procs: list[subprocess.Popen[bytes]] = []

    def child_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GENQUEUE_")}
        env.update(self.env)
        env["GENQUEUE_HOME"] = os.environ.get("GENQUEUE_HOME", "")
        return env

    def on(self, host: str, *cmd: str, log: str | None = None) -> subprocess.Popen[bytes]:
        """Start a command on `host` (its output to workdir/log)."""
        out = (self.workdir / log).open("wb") if log is not None else subprocess.DEVNULL
        proc = subprocess.Popen(
            [*self.net.exec(host), *cmd],
            cwd=ROOT,
            env=self.child_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        self.procs.append(proc)
        return proc

    def run_on(self, host: str, *cmd: str, timeout: float = 60) -> str:
        """Run a command on `host` to its end; its stdout."""
        proc = subprocess.run(
            [*self.net.exec(host), *cmd],
            cwd=ROOT,
            env=self.child_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if proc.returncode != 0:
            raise AssertionError(f"{cmd} on {host} exited {proc.returncode}: {proc.stderr}")
        return proc.stdout

    def start_services(self) -> None:
        self.on("svc", *self.redis_cmd, log="redis.log")
        self.pg.start()
        self.run_on("svc", *GQ, "db", "upgrade")
        self.on("svc", *GQ, "scheduler", log="scheduler.log")

    def stop(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        self.pg.stop()
