#!/usr/bin/env bash
# The GPU work of the CUDA path in stages, each meant to fit one 10-minute command on a lent GPU
# machine (no network there, and nothing kept between commands: every command starts with `build`).
#
#   bash benchmarks/gpu_session.sh build test     # install with the CUDA kernels, run every GPU test
#   bash benchmarks/gpu_session.sh build bench    # benchmarks/gpu.py (tinygpt vs torch) + cuda_kernels.py
#   bash benchmarks/gpu_session.sh build train    # examples/train_shakespeare.py --device cuda (target <= 1.47)
#
# Logs, JSON and the training summary go to $OUT (default out-gpu/): at most 8 files, as the device
# tool returns. The training text must travel with the tree: copy ../shared/data/tinyshakespeare.txt
# to data/ (ignored by git) and carry `data`. PYTHON picks the interpreter (default python3, which on
# the lent machines is the one with CuPy and PyTorch). Each stage prints its wall time.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-$ROOT/out-gpu}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 HYPOTHESIS_PROFILE=${HYPOTHESIS_PROFILE:-ci}
mkdir -p "$OUT"
status=0

stage_build() {
  TINYGPT_CUDA=ON CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) "$PY" -m pip install -q --no-build-isolation --no-deps \
    -Cbuild-dir=build/gpu-session . || return 1
  (cd /tmp && "$PY" - <<'EOF'
import tinygpt as tg
print("tinygpt", tg.__version__, "| GPU:", tg.backend.cuda_available(), "| CUDA ops:", ", ".join(tg.kernels.cuda_ops()))
if not tg.backend.cuda_available() or not tg.kernels.cuda_ops():
    raise SystemExit("no usable GPU or no CUDA kernels in this build")
EOF
  )
}

stage_test() {  # from /tmp, so the installed package (with tinygpt._C) is the one imported
  (cd /tmp && "$PY" -m pytest -q -p no:cacheprovider -m gpu -rs --durations=15 "$ROOT/tests")
}

stage_bench() {
  "$PY" benchmarks/gpu.py --json "$OUT/gpu.json" && "$PY" benchmarks/cuda_kernels.py --quick
}

stage_train() {
  [ -f data/tinyshakespeare.txt ] || { echo "data/tinyshakespeare.txt is missing (copy it there and carry data)"; return 1; }
  "$PY" examples/train_shakespeare.py --device cuda --data data/tinyshakespeare.txt --out-dir /tmp/shakespeare-gpu \
    --no-progress || return 1
  cp /tmp/shakespeare-gpu/*.json "$OUT/"
}

[ $# -gt 0 ] || { sed -n '2,12p' "$0"; exit 2; }
for stage in "$@"; do
  case "$stage" in build | test | bench | train) ;; *) echo "unknown stage '$stage' (build, test, bench, train)"; exit 2 ;; esac
  echo "== $stage"
  start=$(date +%s)
  "stage_$stage" 2>&1 | tee "$OUT/$stage.log"
  rc=${PIPESTATUS[0]}
  echo "== $stage: exit $rc after $(($(date +%s) - start)) s" | tee -a "$OUT/$stage.log"
  if [ "$rc" -ne 0 ]; then
    status=$rc
    [ "$stage" = build ] && break  # nothing else can run without the build
  fi
done
exit $status
