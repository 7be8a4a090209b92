"""The layers of docs/architecture.md, as imports: the shared contract (genqueue.*
modules) imports no room; storage imports neither scheduler nor worker; the scheduler
never imports the worker; the entry points sit on top; torch stays out of everything
but the engines."""

from __future__ import annotations

import subprocess
import sys

import pytest

GROUND = (
    "genqueue.errors",
    "genqueue.params",
    "genqueue.settings",
    "genqueue.protocol",
    "genqueue.broker",
    "genqueue.formats",
    "genqueue.resultline",
    "genqueue.workeropts",
    "genqueue.webhooks",
)
ROOMS = ("storage", "scheduler", "worker", "client", "cli", "api")

#: room -> rooms it must never import (worker may use the scheduler's dispatcher only).
FORBIDDEN = {
    "storage": ("scheduler", "worker", "client", "cli"),
    "scheduler": ("worker", "client", "cli"),
    "worker": ("client", "cli"),
    "client": ("worker", "cli"),
    "api": ("worker", "cli", "client"),
}


def _modules_of(room: str) -> str:
    """Python that imports every module of a room (torch engines excepted)."""
    return (
        "import importlib, pkgutil\n"
        f"pkg = importlib.import_module('genqueue.{room}')\n"
        "for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "    if m.name.endswith(('.engines.hf', '.engines.deepspeed', '.engines.constrained',\n"
        "                        '.engines.scoring', '.sampling')):\n"
        "        continue\n"
        "    if '.migrations' in m.name or m.name.endswith('.__main__'):\n"
        "        continue\n"
        "    importlib.import_module(m.name)\n"
    )


def _run(code: str) -> None:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_the_shared_contract_imports_no_room() -> None:
    _run(
        "import sys\n"
        + "".join(f"import {m}\n" for m in GROUND)
        + "bad = sorted(m for m in sys.modules if m.split('.')[:2] in "
        + repr([["genqueue", r] for r in ROOMS])
        + ")\n"
        "assert not bad, bad\n"
    )


@pytest.mark.parametrize("room", sorted(FORBIDDEN))
def test_a_room_imports_only_the_rooms_below_it(room: str) -> None:
    banned = [["genqueue", r] for r in FORBIDDEN[room]]
    extra = ""
    if room == "worker":
        # A worker re-sends tasks it splits or releases through the scheduler's one
        # Dispatcher; nothing else of the scheduler (input readers, planning) loads.
        extra = (
            "sched = sorted(m for m in sys.modules if m.startswith('genqueue.scheduler.'))\n"
            "assert sched == ['genqueue.scheduler.dispatch'], sched\n"
        )
    _run(
        "import sys\n"
        + _modules_of(room)
        + f"bad = sorted(m for m in sys.modules if m.split('.')[:2] in {banned!r})\n"
        "assert not bad, bad\n" + extra
    )


def test_only_the_engines_import_torch() -> None:
    _run(
        "import sys\n"
        + "".join(f"import {m}\n" for m in GROUND)
        + _modules_of("storage")
        + _modules_of("scheduler")
        + _modules_of("client")
        + _modules_of("cli")
        + "import genqueue.worker.engines, genqueue.worker.supervisor, genqueue.worker.runner\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'transformers', 'deepspeed'))\n"
        "assert not bad, bad[:10]\n"
        "assert 'genqueue.worker.engines.hf' not in sys.modules\n"
    )


def test_the_api_imports_neither_torch_nor_the_worker() -> None:
    _run(
        "import sys\n"
        "import genqueue.api\n"
        "app = genqueue.api.create_app\n"
        + _modules_of("api")
        + "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers') "
        "or m == 'genqueue.worker' or m.startswith('genqueue.worker.'))\n"
        "assert not bad, bad[:10]\n"
    )


def test_what_genqueue_run_needs_before_its_fork_server_imports_no_database_layer() -> None:
    """`genqueue run` starts the fork server (torch's import, the run's serial chain)
    once the CLI, its option checks and the supervisor are imported; SQLAlchemy and the
    storage layer load afterwards, while the server imports."""
    _run(
        "import sys\n"
        "import genqueue.cli, genqueue.protocol, genqueue.scheduler.targets\n"
        "import genqueue.worker.supervisor\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('sqlalchemy', 'torch')"
        " or m.startswith('genqueue.storage'))\n"
        "assert not bad, bad[:10]\n"
    )
