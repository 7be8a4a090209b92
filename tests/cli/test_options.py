"""Command-line options come from the models that define them: every WorkerOptions
field is a flag of `genqueue worker` (and, but the job's own, of `genqueue run`), and
every generation parameter is a flag of `run` and `submit`."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from genqueue.cli import app
from genqueue.cli.errors import OptionError
from genqueue.cli.jobopts import JobOptions
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


def test_json_schema_is_a_file_or_inline_json(tmp_path: Path) -> None:
    schema = tmp_path / "s.json"
    schema.write_text('{"type": "object"}')
    file_opts = JobOptions({"json_schema": str(schema), "choices": [], "postprocess": "trim"})
    assert file_opts.params() == {"json_schema": {"type": "object"}, "postprocess": "trim"}
    inline = JobOptions({"json_schema": '{"type": "array"}'}).params()
    assert inline == {"json_schema": {"type": "array"}}
    with pytest.raises(OptionError, match="--json-schema: cannot read"):
        JobOptions({"json_schema": str(tmp_path / "missing.json")}).params()
    with pytest.raises(OptionError, match="is not valid JSON"):
        JobOptions({"json_schema": "{nope"}).params()


@pytest.mark.parametrize("command", ["run", "submit"])
def test_reuse_is_a_job_flag(command: str) -> None:
    assert {"--reuse", "--no-reuse"} <= flags(command)
