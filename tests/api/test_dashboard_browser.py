"""The dashboard in a real headless Chromium (Debian's `chromium`, driven by Playwright):
log in with an API key, watch a running job's progress advance on the list and on its
page (live refresh, no reload), cancel it with the button (confirming the dialog), see
another tenant's job absent and the warning for a model without a worker, open the
workers page; every page's screenshot must show a real page (not blank).

One deployment for the module: `genqueue api` and one `genqueue worker` on the
fault-injecting dry-run engine, slowed to 20 items/s so progress is observable. The
same deployment shows that workers send the Celery events Flower reads."""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from tests.api.conftest import GQ, stop_all, wait_until_up
from tests.conftest import unavailable
from tests.services import free_port

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("GENQUEUE_TEST_CHROMIUM", "/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[2]
FAULTY = "tests.reliability.faulty:FaultyEngine"
MODEL = "faulty-model"
#: Seconds the engine spends per item: 20 items/s, one task (5 items) every 0.25 s.
DELAY = "0.05"


@dataclass
class Deployment:
    url: str
    keys: dict[str, str]
    shots: Path
    broker: str

    def submit(self, tenant: str, model: str, n: int) -> str:
        records = [{"prompt": f"item {i} of a job to watch"} for i in range(n)]
        r = httpx.post(
            self.url + "/v1/jobs",
            json={
                "model": model,
                "records": records,
                "chunk_size": 5,
                "params": {"max_new_tokens": 4},
            },
            headers={"Authorization": f"Bearer {self.keys[tenant]}"},
            timeout=60,
        )
        assert r.status_code == 201, r.text
        return str(r.json()["job_id"])


@pytest.fixture(scope="module")
def deployment(
    tmp_path_factory: pytest.TempPathFactory, _redis_server: str
) -> Iterator[Deployment]:
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        unavailable("Chromium (apt-get install chromium)", f"{CHROMIUM} not found")
    from genqueue.broker import redis_client
    from genqueue.storage import catalog, tenants
    from genqueue.storage.db import open_store

    client = redis_client(_redis_server)
    client.flushdb()
    client.close()
    root = tmp_path_factory.mktemp("dashboard")
    db = f"sqlite:///{root / 'gq.db'}"
    store = open_store(db)
    catalog.offer_model(store, "faulty", MODEL)
    # Offered, but no worker serves this revision: its jobs wait (and the pages say so).
    catalog.offer_model(store, "idle", MODEL, revision="unserved")
    keys = {t: tenants.create_key(store, t)[1] for t in ("alice", "bob")}
    store.dispose()
    env = {
        **os.environ,
        "GENQUEUE_DATABASE_URL": db,
        "GENQUEUE_BROKER_URL": _redis_server,
        "GENQUEUE_HOME": str(root / "home"),
        "GENQUEUE_FILES_DIR": str(root / "files"),
        "GENQUEUE_LEASE_SECONDS": "6",
        "GQ_FAULT_DELAY": DELAY,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
    }
    port = free_port()
    procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(name: str, *args: str) -> None:
        log = (root / f"{name}.log").open("wb")
        procs[name] = subprocess.Popen(
            [*GQ, *args], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO
        )

    try:
        start("api", "api", "--port", str(port))
        start(
            "worker",
            "worker",
            "--model",
            MODEL,
            "--engine",
            FAULTY,
            "--device",
            "cpu",
            "--threads",
            "1",
            "--loglevel",
            "WARNING",
        )
        url = f"http://127.0.0.1:{port}"
        wait_until_up(url, procs["api"], root / "api.log")
        wait_for_worker(db, procs["worker"], root / "worker.log")
        yield Deployment(url, keys, root / "screenshots", _redis_server)
    finally:
        stop_all(procs)


def wait_for_worker(db: str, proc: subprocess.Popen[bytes], log: Path, bound: float = 120) -> None:
    """Until the worker's heartbeat row is in SQL (its model is loaded, it consumes)."""
    from genqueue.storage import workers
    from genqueue.storage.db import open_store

    store = open_store(db, migrate=False)
    try:
        deadline = time.monotonic() + bound
        while not workers.list_workers(store, within_seconds=30):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the worker did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
    finally:
        store.dispose()


@pytest.fixture(scope="module")
def browser(deployment: Deployment) -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        unavailable("playwright (pip install -e '.[dev]')", exc)

    executable = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, headless=True)
        yield b
        b.close()


def distinct_colors(page: Any, png: bytes) -> int:
    """Colours in a screenshot, counted by the browser's own PNG decoder."""
    return int(
        page.evaluate(
            """async (b64) => {
              const img = new Image();
              img.src = "data:image/png;base64," + b64;
              await img.decode();
              const c = document.createElement("canvas");
              c.width = img.width; c.height = img.height;
              const g = c.getContext("2d");
              g.drawImage(img, 0, 0);
              const d = g.getImageData(0, 0, c.width, c.height).data;
              const seen = new Set();
              for (let i = 0; i < d.length; i += 12) {
                seen.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
              }
              return seen.size;
            }""",
            base64.b64encode(png).decode(),
        )
    )


def shoot(page: Any, blank: Any, shots: Path, name: str) -> None:
    shots.mkdir(parents=True, exist_ok=True)
    path = shots / f"{name}.png"
    png = page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 5000, f"{path}: {path.stat().st_size} bytes"
    colors = distinct_colors(blank, png)
    assert colors > 20, f"{path} looks blank: {colors} colours"


def done_of(page: Any, job_id: str) -> int:
    text = page.locator(f'tr[data-job="{job_id}"] .done').inner_text()
    return int(text)


def wait_done_above(page: Any, selector: str, n: int, timeout_ms: int = 30_000) -> None:
    page.wait_for_function(
        """([sel, n]) => { const e = document.querySelector(sel);
                          return e && parseInt(e.textContent) > n; }""",
        arg=[selector, n],
        timeout=timeout_ms,
    )


def test_dashboard_in_a_browser(deployment: Deployment, browser: Any) -> None:
    d = deployment
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    # Refresh four times a second instead of every 2 s: the same code, less waiting.
    context.add_init_script("window.GQ_REFRESH_MS = 250;")
    page = context.new_page()
    blank = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    # Script errors only (the refused login and the other tenant's page answer 401, 404).
    page.on(
        "console",
        lambda m: (
            errors.append(m.text)
            if m.type == "error" and not m.text.startswith("Failed to load resource")
            else None
        ),
    )

    # Not logged in: the login form; a wrong key says why.
    page.goto(d.url + "/")
    assert page.url.startswith(d.url + "/login")
    page.fill("#key", "gq-wrong")
    page.click("button[type=submit]")
    assert "unknown or revoked" in page.locator("#login-error").inner_text()
    shoot(page, blank, d.shots, "login-failed")

    running = d.submit("alice", "faulty", 400)
    waiting = d.submit("alice", "idle", 3)
    bobs = d.submit("bob", "faulty", 2)

    page.fill("#key", d.keys["alice"])
    page.click("button[type=submit]")
    page.wait_for_selector(f'tr[data-job="{running}"]')
    assert page.locator("#tenant").inner_text() == "alice"
    assert bobs not in page.content()
    # The job without a worker is flagged, with the command that starts one.
    warning = page.locator(f'[data-warning="{waiting}"]').inner_text()
    assert "genqueue worker --model faulty-model --revision unserved" in warning

    # Progress advances on the list without a reload.
    wait_done_above(page, f'tr[data-job="{running}"] .done', 0)
    first = done_of(page, running)
    wait_done_above(page, f'tr[data-job="{running}"] .done', first)
    assert done_of(page, running) > first
    shoot(page, blank, d.shots, "jobs")

    # The state filter.
    page.click('.filters a:text-is("queued")')
    page.wait_for_url(re.compile(r".*state=queued"))
    assert page.locator(f'tr[data-job="{waiting}"]').count() == 1
    assert page.locator(f'tr[data-job="{running}"]').count() == 0

    # The job page: counts advance, the chart and recent results show, then cancel.
    page.goto(f"{d.url}/jobs/{running}")
    before = int(page.locator("#done").inner_text().split("/")[0])
    wait_done_above(page, "#done", before)
    page.wait_for_selector("#recent")
    assert page.locator("#spec").inner_text().count("faulty") >= 1
    page.reload()
    page.wait_for_selector("#throughput")
    shoot(page, blank, d.shots, "job-running")
    dialogs: list[str] = []

    def accept(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.accept()

    # A live refresh keeps the actions that did not change: the button being clicked is
    # not swapped away under the pointer (a slow page would otherwise never be clicked).
    button = page.query_selector("#cancel")
    assert button is not None
    before = page.get_attribute("body", "data-refreshed")
    page.wait_for_function(
        f"() => document.body.getAttribute('data-refreshed') !== {before!r}".replace(
            "None", "null"
        ),
        timeout=20_000,
    )
    assert button.evaluate("b => b.isConnected")
    page.once("dialog", accept)
    page.click("#cancel")
    page.wait_for_selector("#notice")
    assert dialogs and running in dialogs[0]
    page.wait_for_function(
        "() => document.querySelector('#state').textContent.trim() === 'cancelled'",
        timeout=20_000,
    )
    succeeded = int(page.locator('[data-count="succeeded"]').inner_text())
    cancelled = int(page.locator('[data-count="cancelled"]').inner_text())
    assert 0 < succeeded < 400 and cancelled > 0 and succeeded + cancelled == 400
    assert page.locator("#retry").count() == 1
    shoot(page, blank, d.shots, "job-cancelled")

    # Another tenant's job is not found.
    assert page.goto(f"{d.url}/jobs/{bobs}").status == 404

    # The workers page: the live worker, and the queue no worker serves.
    page.goto(d.url + "/workers")
    row = page.locator("#workers tbody tr").first.inner_text()
    assert "faulty" in row and "ago" in row
    unserved = page.locator("#queues tr.unserved").inner_text()
    assert "no live worker" in unserved and "--revision unserved" in unserved
    shoot(page, blank, d.shots, "workers")

    # Log out: the pages ask for a login again.
    page.click("text=Log out")
    page.wait_for_url(re.compile(r".*/login"))
    page.goto(d.url + "/workers")
    assert "/login" in page.url
    assert not errors, errors
    context.close()


def test_workers_send_the_celery_events_flower_reads(deployment: Deployment) -> None:
    from genqueue.broker import make_celery

    app = make_celery(deployment.broker, name="test-events")
    seen: list[dict[str, Any]] = []
    with app.connection_for_read() as conn:
        receiver = app.events.Receiver(conn, handlers={"*": seen.append})
        listener = threading.Thread(
            target=lambda: receiver.capture(limit=None, timeout=None, wakeup=False), daemon=True
        )
        listener.start()
        try:
            time.sleep(1.5)  # subscribed before the tasks are sent
            deployment.submit("alice", "faulty", 6)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                kinds = {e["type"] for e in list(seen)}
                if {"task-succeeded", "worker-heartbeat"} <= kinds:
                    break
                time.sleep(0.2)
        finally:
            receiver.should_stop = True
            listener.join(10)
    kinds = {e["type"] for e in seen}
    assert {"task-sent", "task-received", "task-started", "task-succeeded"} <= kinds, kinds
    assert "worker-heartbeat" in kinds, kinds
    done = [e for e in seen if e["type"] == "task-succeeded"]
    assert all(e["hostname"].startswith("gq-") for e in done), done[:3]
