"""Command-line options come from the models that define them: every WorkerOptions
field is a flag of `genqueue worker` (and, but the job's own, of `genqueue run`), and
every generation parameter is a flag of `run` and `submit`."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from genqueue.cli import app
from genqueue.params import GenerationParams
from genqueue.workeropts import WorkerOptions


def flags(command: str) -> set[str]:
    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return set(re.findall(r"--[a-z][a-z-]*", result.output))


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def test_worker_flags_are_the_worker_options() -> None:
    have = flags("worker")
    assert {flag(n) for n in WorkerOptions.model_fields} <= have
    assert "--no-trust-remote-code" in have


def test_run_takes_the_worker_options_the_job_does_not_give() -> None:
    have = flags("run")
    job_given = {"model", "revision", "trust_remote_code"}
    assert {flag(n) for n in WorkerOptions.model_fields if n not in job_given} <= have


@pytest.mark.parametrize("command", ["run", "submit"])
def test_every_generation_parameter_is_a_flag(command: str) -> None:
    have = flags(command)
    renamed = {"choices": "--choice"}  # repeatable: one label per flag
    expected = {renamed.get(n, flag(n)) for n in GenerationParams.model_fields if n != "do_sample"}
    assert expected | {"--do-sample", "--greedy", "--params"} <= have


def test_help_shows_a_parameters_range_and_default() -> None:
    result = CliRunner().invoke(app, ["submit", "--help"], env={"COLUMNS": "200"})
    assert "0 < temperature <= 100" in result.output
    assert "1 <= max_new_tokens <= 32768; default 64" in result.output
