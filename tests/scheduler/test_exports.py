"""Exports: every format is a view of the same result lines, in input order, written
atomically."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from genqueue.resultline import FLAT_COLUMNS
from genqueue.scheduler.errors import ExportError
from genqueue.scheduler.exports import export_results, parquet_schema
from genqueue.scheduler.targets import export_format
from genqueue.storage import leases
from genqueue.storage.claims import Claim
from genqueue.storage.db import Store
from genqueue.storage.models import Job, ResultStatus
from genqueue.storage.results import NewResult, iter_results, write_results
from tests.schemas import validate_line
from tests.storage.factories import make_job, ok, task_ids


def a_job(store: Store) -> Job:
    """Five items: one plain, one with two outputs and truncated, one failed, two pending."""
    job = make_job(store, n=5, chunk=5)
    claim = leases.claim_task(
        store, task_ids(store, job.id)[0], "w", lease_seconds=30, max_attempts=3
    )
    assert isinstance(claim, Claim)
    many = NewResult(
        idx=1,
        status=ResultStatus.SUCCEEDED,
        output="a, b",
        outputs=["a, b", 'say "c"\nd'],
        finish_reason="length",
        prompt_tokens=2,
        completion_tokens=8,
        truncated=True,
    )
    bad = NewResult(
        idx=2, status=ResultStatus.FAILED, error_code="generation_error", error_message="x"
    )
    write_results(store, claim, [ok(0, "héllo"), many, bad])
    return job


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_every_format_holds_the_same_lines(store: Store, tmp_path: Path, fmt: str) -> None:
    job = a_job(store)
    expected = [line.flat() for line in iter_results(store, job.id, include_pending=True)]
    path = tmp_path / f"out.{fmt}"
    assert export_results(store, job.id, str(path), include_pending=True) == 5
    if fmt == "jsonl":
        lines = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]
        for line in lines[:3]:
            validate_line(line)
        assert [ln["index"] for ln in lines] == [0, 1, 2, 3, 4]
        assert lines[1]["outputs"] == ["a, b", 'say "c"\nd'] and lines[1]["truncated"] is True
        assert lines[0]["output"] == "héllo" and lines[3]["status"] == "pending"
        return
    if fmt == "csv":
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        assert list(rows[0]) == [name for name, _ in FLAT_COLUMNS]
        assert json.loads(rows[1]["outputs"]) == expected[1]["outputs"]
        assert rows[2]["error_code"] == "generation_error" and rows[0]["output"] == "héllo"
        return
    table = pq.read_table(path)
    assert table.schema.equals(parquet_schema())
    assert table.to_pylist() == expected


def test_only_finished_items_without_include_pending(store: Store, tmp_path: Path) -> None:
    job = a_job(store)
    assert export_results(store, job.id, str(tmp_path / "x.jsonl")) == 3


def test_stdout_and_format_names(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    job = a_job(store)
    assert export_results(store, job.id, "-") == 3
    assert [json.loads(x)["index"] for x in capsys.readouterr().out.splitlines()] == [0, 1, 2]
    with pytest.raises(ExportError, match="parquet cannot be written to stdout"):
        export_results(store, job.id, "-", fmt="parquet")
    assert export_format("x.out", "JSON") == "jsonl" and export_format("x.pq") == "parquet"
    with pytest.raises(ExportError, match=r"cannot tell the format of 'x\.out'"):
        export_format("x.out")
    with pytest.raises(ExportError, match="is not one of jsonl, csv, parquet"):
        export_format("x.jsonl", "xml")


def test_a_failed_export_leaves_no_partial_file(store: Store, tmp_path: Path) -> None:
    job = a_job(store)
    out = tmp_path / "out"
    blocker = out / "taken.jsonl"
    blocker.mkdir(parents=True)  # a directory where the file should go
    with pytest.raises(ExportError, match="is a directory"):
        export_results(store, job.id, str(blocker))
    assert [p.name for p in out.iterdir()] == ["taken.jsonl"]  # no temporary left
