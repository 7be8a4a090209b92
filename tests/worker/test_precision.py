"""CPU speed options: bfloat16 (where the CPU has it natively) and `--quantize int8`,
through the real engine and the worker's task runner; the combinations that cannot run
are refused with the reason. (How close they stay to float32 is measured by
bench/cpu_options.py, not here.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from genqueue.params import GenerationParams
from genqueue.settings import Settings
from genqueue.storage.db import Store, open_store
from genqueue.storage.results import iter_results
from genqueue.storage.status import view_job
from genqueue.worker.engines import load_engine
from genqueue.worker.engines import precision as prec
from genqueue.worker.engines.base import Engine, GenRequest
from genqueue.worker.errors import EngineError
from genqueue.worker.runner import WorkerContext, run_task
from genqueue.workeropts import WorkerOptions
from tests.storage.factories import make_job, task_ids


def _run_job(store: Store, engine: Engine) -> list[dict[str, object]]:
    job = make_job(store, n=3, chunk=3, model=engine.info.model_ref, params={"max_new_tokens": 4})
    ctx = WorkerContext(store=store, engine=engine, settings=Settings(), worker_id="w1")
    for tid in task_ids(store, job.id):
        run_task(ctx, tid)
    st = view_job(store, job.id)
    assert st.job.state == "completed"
    assert st.job.engine == engine.info.engine  # the precision is in the provenance
    return [line.to_record() for line in iter_results(store, job.id)]


def test_int8_quantises_linear_layers_and_generates(sqlite_url: str, tiny_t5_dir: Path) -> None:
    engine = load_engine(WorkerOptions(model=str(tiny_t5_dir), quantize="int8"))
    try:
        assert engine.info.engine == "hf+int8" and engine.info.dtype == "float32"
        model = engine.model  # type: ignore[attr-defined]
        int8_linear = torch.ao.nn.quantized.dynamic.Linear
        quantised = [m for m in model.modules() if isinstance(m, int8_linear)]
        assert quantised and not any(type(m) is torch.nn.Linear for m in model.modules())
        store = open_store(sqlite_url)
        lines = _run_job(store, engine)
        assert [ln["status"] for ln in lines] == ["succeeded"] * 3
        assert all(ln["usage"]["completion_tokens"] > 0 for ln in lines)  # type: ignore[index]
    finally:
        engine.close()


def test_bfloat16_generates_or_is_refused(sqlite_url: str, tiny_gpt2_dir: Path) -> None:
    options = WorkerOptions(model=str(tiny_gpt2_dir), dtype="bfloat16")
    if prec.cpu_has_native_bf16() is False:
        with pytest.raises(EngineError, match="AVX512-BF16"):
            load_engine(options)
        return
    engine = load_engine(options)
    try:
        assert (engine.info.engine, engine.info.dtype) == ("hf+bfloat16", "bfloat16")
        params = GenerationParams(max_new_tokens=5, min_new_tokens=5)
        out = engine.generate([GenRequest(0, "hello there", params)])[0]
        assert out.error is None and out.completion_tokens == 5
        store = open_store(sqlite_url)
        assert [ln["status"] for ln in _run_job(store, engine)] == ["succeeded"] * 3
    finally:
        engine.close()


def test_bfloat16_is_refused_where_the_cpu_would_emulate_it(
    tiny_gpt2_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(prec, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    with pytest.raises(EngineError, match="emulated"):
        load_engine(WorkerOptions(model=str(tiny_gpt2_dir), dtype="bf16"))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"quantize": "int4"}, "unknown quantize 'int4'; use none or int8"),
        ({"quantize": "int8", "dtype": "bfloat16"}, "use --dtype float32"),
        ({"quantize": "int8", "engine": "deepspeed"}, "hf engine only"),
        ({"quantize": "int8"}, "Conv1D"),  # GPT-2 has no Linear layers but its head
    ],
)
def test_int8_refuses_what_it_cannot_run(
    tiny_gpt2_dir: Path, options: dict[str, str], message: str
) -> None:
    if options.get("engine") == "deepspeed":
        pytest.importorskip("deepspeed")
    with pytest.raises(EngineError, match=message):
        load_engine(WorkerOptions(model=str(tiny_gpt2_dir), **options))


def test_int8_on_a_gpu_is_refused() -> None:
    options = WorkerOptions(model="m", quantize="int8")
    with pytest.raises(EngineError, match="CPU only"):
        prec.check_precision(options, "hf", torch.device("cuda"), torch.float32)


def test_the_options_reach_every_model_process() -> None:
    options = WorkerOptions(model="m", quantize="int8", dtype="float32")
    args = options.to_args()
    assert "--quantize" in args
    assert WorkerOptions.from_args(args)[0] == options
