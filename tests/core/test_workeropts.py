"""Worker options survive the trip supervisor → child process as arguments."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from genqueue.workeropts import WorkerOptions


@pytest.mark.parametrize(
    "options",
    [
        WorkerOptions(model="tiny-gpt2"),
        WorkerOptions(
            model="/models/x",
            engine="deepspeed",
            revision="abc",
            device="cuda:1",
            dtype="bfloat16",
            threads=3,
            tensor_parallel=2,
            trust_remote_code=True,
            host_memory_limit_mb=512,
        ),
        WorkerOptions(model="m", engine="pkg.mod:Engine", trust_remote_code=False, threads=1),
    ],
)
def test_arguments_round_trip(options: WorkerOptions) -> None:
    args = options.to_args()
    back, rest = WorkerOptions.from_args([*args, "--name", "w1"])
    assert back == options
    assert rest == ["--name", "w1"]  # the process's own arguments are left for it


def test_only_what_differs_from_the_defaults_is_passed() -> None:
    assert WorkerOptions(model="m").to_args() == ["--model", "m"]
    assert WorkerOptions(model="m", trust_remote_code=True).to_args() == [
        "--model",
        "m",
        "--trust-remote-code",
    ]


def test_invalid_options_are_refused_with_the_field() -> None:
    with pytest.raises(ValidationError, match="tensor_parallel"):
        WorkerOptions(model="m", tensor_parallel=0)
    with pytest.raises(ValidationError, match="threads"):
        WorkerOptions.from_args(["--model", "m", "--threads", "-1"])
