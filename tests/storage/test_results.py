"""Result writes: first writer wins, duplicates counted, text stored alike everywhere."""

from __future__ import annotations

import time

from genqueue.storage import leases, status
from genqueue.storage.claims import Claim
from genqueue.storage.db import Store
from genqueue.storage.models import ResultStatus
from genqueue.storage.results import NewResult, iter_results, write_results
from tests.storage.factories import make_job, ok, task_ids


def test_first_writer_wins_and_duplicates_are_counted(store: Store) -> None:
    job = make_job(store, n=4, chunk=4)
    (tid,) = task_ids(store, job.id)
    first = leases.claim_task(store, tid, "w1", lease_seconds=0.01, max_attempts=3)
    assert isinstance(first, Claim)
    time.sleep(0.05)  # lease expires: a second worker steals it
    second = leases.claim_task(store, tid, "w2", lease_seconds=30, max_attempts=3)
    assert isinstance(second, Claim)
    assert write_results(store, second, [ok(i, "second") for i in range(4)]) == (4, 0)
    assert write_results(store, first, [ok(i, "first") for i in range(4)]) == (0, 4)
    assert {r.output for r in iter_results(store, job.id)} == {"second"}
    assert status.view_job(store, job.id).job.duplicate_executions == 4
    assert status.view_job(store, job.id).counts.succeeded == 4
    # The slow worker lost its lease: its heartbeat says so and its finish changes nothing.
    assert not leases.heartbeat(store, first, 30)
    assert leases.heartbeat(store, second, 30)


def test_nul_characters_are_stored_the_same_on_every_backend(store: Store) -> None:
    """PostgreSQL text cannot hold NUL; a model that emits one must not fail the item."""
    job = make_job(store, n=1, chunk=1)
    (tid,) = task_ids(store, job.id)
    claim = leases.claim_task(store, tid, "w", lease_seconds=30, max_attempts=3)
    assert isinstance(claim, Claim)
    res = NewResult(idx=0, status=ResultStatus.SUCCEEDED, output="a\x00b", outputs=["a\x00b", "c"])
    assert write_results(store, claim, [res]) == (1, 0)
    row = next(iter(iter_results(store, job.id)))
    assert row.output == "ab" and row.outputs == ["ab", "c"]


def test_structured_fields_round_trip_on_every_backend(store: Store) -> None:
    """Raw output, parsed JSON, the incomplete flag, logprobs and label scores are
    stored and read back alike on SQLite and PostgreSQL."""
    from genqueue.storage.results import iter_stored

    job = make_job(store, n=3, chunk=3)
    (tid,) = task_ids(store, job.id)
    claim = leases.claim_task(store, tid, "w", lease_seconds=30, max_attempts=3)
    assert isinstance(claim, Claim)
    lp = {"content": [{"token": "x", "logprob": -1.5, "bytes": [120], "top_logprobs": []}]}
    rows = [
        NewResult(
            idx=0,
            status=ResultStatus.SUCCEEDED,
            output='{"a": 1}',
            raw_output=' {"a": 1} ',
            parsed={"a": 1, "b": [True, None, "é"]},
            logprobs=[lp],
            choice_scores={"pos": -0.5, "neg": -2.25},
        ),
        NewResult(idx=1, status=ResultStatus.SUCCEEDED, output="{", incomplete=True),
        NewResult(
            idx=2,
            status=ResultStatus.SUCCEEDED,
            output="a",
            outputs=["a", "b"],
            raw_output="a ",
            raw_outputs=["a ", "b "],
            logprobs=[lp, lp],
        ),
    ]
    assert write_results(store, claim, rows) == (3, 0)
    stored = list(iter_stored(store, job.id))
    first, cut, many = (s.line for s in stored)
    assert first.parsed == {"a": 1, "b": [True, None, "é"]} and first.raw_output == ' {"a": 1} '
    assert first.choice_scores == {"pos": -0.5, "neg": -2.25}
    assert first.logprobs is not None and first.logprobs.content[0].logprob == -1.5
    assert cut.incomplete and cut.parsed is None and cut.logprobs is None
    assert (many.raw_output, many.raw_outputs) == ("a ", ["a ", "b "])
    assert stored[2].logprobs == [lp, lp]
    assert '"parsed"' not in cut.to_json() and '"incomplete":true' in cut.to_json()
