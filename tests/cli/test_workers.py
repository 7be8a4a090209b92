"""`genqueue workers` lists the live workers from their SQL heartbeats (what each works
on, heartbeat age, items/s) and the models with queued work but no live worker; `genqueue
status` warns about such a job with the command that starts a worker for it."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update
from typer.testing import CliRunner

from genqueue.cli import app
from genqueue.cli.app import err as cli_err
from genqueue.cli.app import out as cli_out
from genqueue.protocol import queue_for
from genqueue.storage import leases, workers
from genqueue.storage.claims import Claim
from genqueue.storage.db import open_store, utcnow
from genqueue.storage.models import WorkerRow
from genqueue.storage.results import write_results
from tests.storage.factories import make_job, ok, task_ids


def test_workers_and_the_status_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'gq.db'}"
    store = open_store(url)
    served = make_job(store, 6, 3, model="/m/served", queue="q-served")
    waiting = make_job(
        store, 4, 4, model="/m/alone", revision="v2", queue=queue_for("/m/alone", "v2")
    )
    # A job that named no revision: its stored one is what its first worker loaded, and a
    # worker started with that would serve another queue, so the command names none.
    loaded = make_job(
        store, 2, 2, model="/m/local", revision="local-abc", queue=queue_for("/m/local")
    )
    workers.beat(store, "gq-7@box1", queue="q-served", model="/m/served", engine="hf")
    workers.beat(store, "gq-8@box2", queue="q-served", model="/m/served", engine="hf")
    with store.session() as s:
        s.execute(
            update(WorkerRow)
            .where(WorkerRow.name == "gq-8@box2")
            .values(seen_at=utcnow() - timedelta(seconds=600))
        )
    claim = leases.claim_task(
        store, task_ids(store, served.id)[0], "gq-7@box1", lease_seconds=60, max_attempts=3
    )
    assert isinstance(claim, Claim)
    write_results(store, claim, [ok(0), ok(1)])
    store.dispose()
    env = {"GENQUEUE_DATABASE_URL": url}
    # The CLI's consoles exist already (another test may have imported the CLI first):
    # give the table room for its columns as a wide terminal would.
    monkeypatch.setattr(cli_out, "width", 250)
    monkeypatch.setattr(cli_err, "width", 250)
    runner = CliRunner()

    result = runner.invoke(app, ["workers", "--json"], env=env)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [w["name"] for w in data["workers"]] == ["gq-7@box1"]  # the stale one is left out
    (w,) = data["workers"]
    assert w["host"] == "box1" and w["engine"] == "hf" and w["live"]
    assert w["tasks"] == [{"task_id": claim.task_id, "job_id": served.id, "done": 2, "items": 3}]
    assert w["items_per_second"] > 0 and w["heartbeat_age_s"] < 30
    queues = {q["queue"]: q for q in data["queues"]}
    assert queues["q-served"]["start"] is None and queues["q-served"]["live_workers"] == 1
    assert queues[waiting.queue]["start"] == "genqueue worker --model /m/alone --revision v2"
    assert queues[loaded.queue]["start"] == "genqueue worker --model /m/local"

    result = runner.invoke(app, ["workers", "--all"], env=env)
    assert result.exit_code == 0, result.output
    assert "gq-7@box1" in result.stdout and "gq-8@box2" in result.stdout
    assert "(stale)" in result.stdout and f"{claim.task_id} (2/3) of {served.id}" in result.stdout
    assert "genqueue worker --model /m/alone --revision v2" in result.stderr

    result = runner.invoke(app, ["status", waiting.id], env=env)
    assert result.exit_code == 0, result.output
    assert f"no live worker serves the model of job {waiting.id}" in result.stderr
    assert "genqueue worker --model /m/alone --revision v2" in result.stderr
    result = runner.invoke(app, ["status", loaded.id], env=env)
    assert result.exit_code == 0, result.output
    assert "genqueue worker --model /m/local\n" in result.stderr.replace(" \n", "\n")
    result = runner.invoke(app, ["status", served.id], env=env)
    assert result.exit_code == 0 and "no live worker" not in result.stderr
