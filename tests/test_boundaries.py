"""Architecture boundaries a user relies on: light imports, no pickle."""

import subprocess
import sys


def test_scheduler_storage_and_client_do_not_import_torch() -> None:
    code = (
        "import sys\n"
        "import genqueue.storage.jobs, genqueue.storage.leases, genqueue.storage.results\n"
        "import genqueue.scheduler.submit, genqueue.scheduler.reconciler\n"
        "import genqueue.scheduler.exports, genqueue.client, genqueue.cli\n"
        "import genqueue.worker.engines, genqueue.worker.supervisor\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'transformers', 'deepspeed', 'genqueue.worker.engines.hf'))\n"
        "assert not bad, bad\n"
        "assert 'genqueue.worker.runner' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_scheduler_never_imports_worker_and_storage_imports_neither() -> None:
    code = (
        "import sys\n"
        "import genqueue.storage.jobs, genqueue.storage.leases, genqueue.storage.results\n"
        "assert not [m for m in sys.modules if m.startswith(('genqueue.scheduler', "
        "'genqueue.worker'))]\n"
        "import genqueue.scheduler.submit, genqueue.scheduler.reconciler, "
        "genqueue.scheduler.exports\n"
        "assert not [m for m in sys.modules if m.startswith('genqueue.worker')]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
