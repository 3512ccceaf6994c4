#!/usr/bin/env bash
# The GPU proof of the CUDA path in ONE command of about 9 minutes on a bare lent H100/H200 (no build,
# cold CuPy kernel cache, no network); docs/gpu.md has the device tool's exact call.
#
#   bash benchmarks/gpu_session.sh            # on the GPU machine: results in $OUT (default out-gpu/)
#   bash benchmarks/gpu_session.sh --smoke    # here, no GPU: every stage at tiny sizes on the CUDA
#                                             # emulator + fake CuPy (tests/cuda_emu), in about a minute
# Stages, each under its own hard timeout taken from what is left of SESSION_BUDGET (default 540 s), so
# a hang costs one stage, not the run, and a failure never stops the stages after it:
#   1 build    cmake with TINYGPT_CUDA=ON for this card's architecture only (nvidia-smi compute_cap),
#              parallel; then the versions (GPU, driver, CUDA, CuPy, PyTorch) and the CUDA ops, failing
#              fast when tinygpt.kernels.cuda_ops() is empty (the later stages then use the reference)
#   2 tests    each CUDA kernel test file (tests/test_cuda_*.py, tests/ops/test_*.py, then tests/test_gpu.py;
#              GPU_TEST_MARK, default `gpu`, selects their tests; hypothesis profile `quick`, 5 examples)
#              alone under a timeout, all of them whatever fails; failing files again with
#              CUDA_LAUNCH_BLOCKING=1 while time allows
#   3 train    examples/train_shakespeare.py --device cuda (nanoGPT's Shakespeare config, TF32), evaluations
#              sized to the budget and --time-limit; target best val <= 1.47 (nanoGPT: 1.4697). On the
#              CuPy reference (TINYGPT_NATIVE=0) when the kernels failed to build or test, or the run crashed
#   4 bench    benchmarks/gpu.py --part model (tinygpt vs PyTorch eager, both TF32): Shakespeare, then
#              GPT-2 124M at block 1024, in the time left
# $OUT gets 8 files at most: build.log tests.log train.log train.json bench.log bench-shakespeare.json
# bench-gpt2.json times.txt (each stage's exit status and duration, and the verdicts). Exit status 0 when
# every stage passed (the --smoke rehearsal of a failing test file aside).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SMOKE=0
case "${1:-}" in
  --smoke) SMOKE=1 ;;
  "") ;;
  *) sed -n '2,22p' "$0"; exit 2 ;;
esac
OUT=${OUT:-$ROOT/out-gpu}
PY=${PYTHON:-python3}
BUDGET=${SESSION_BUDGET:-540}
MARK=${GPU_TEST_MARK:-gpu}
mkdir -p "$OUT"
TMPD=$(mktemp -d)
trap 'rm -rf "$TMPD"' EXIT
export PYTHONUNBUFFERED=1 PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}" HYPOTHESIS_PROFILE=${HYPOTHESIS_PROFILE:-quick}
START=$SECONDS
: >"$OUT/times.txt"

left() { echo $((BUDGET - (SECONDS - START))); }
note() { echo "$*" | tee -a "$OUT/times.txt"; }
cap() { # cap WANT RESERVE: WANT seconds, or less so that RESERVE seconds stay for the later stages
  local n=$(($(left) - $2)); [ "$n" -lt "$1" ] && echo "$n" || echo "$1"
}
# stage NAME LIMIT LOG CMD...: CMD under a hard timeout, output appended to LOG, duration to times.txt
stage() {
  local name=$1 limit=$2 log=$3 t=$SECONDS rc; shift 3
  if [ "$limit" -lt 5 ]; then note "$name: skipped, no time left"; FAILED+=("$name"); return 124; fi
  echo "== $name (limit ${limit}s): $*" >>"$log"
  timeout -k 10 "$limit" "$@" >>"$log" 2>&1
  rc=$?
  note "$name: exit $rc after $((SECONDS - t)) s (limit $limit s)"
  case "$rc:$name" in
    0:* | 5:test\ * | *:*rehearsal*) ;;  # 5: pytest selected no test in that file
    *) FAILED+=("$name") ;;
  esac
  return $rc
}
FAILED=()

if [ $SMOKE = 1 ]; then  # the stand-ins: CuPy played by tests/fake_cupy.py, tinygpt._C.cuda by the emulator
  PYRUN=("$PY" "$ROOT/tests/cuda_emu/run.py")
  export TINYGPT_CUDA_EMULATOR=1
else
  PYRUN=("$PY")
fi
note "gpu_session.sh$([ $SMOKE = 1 ] && echo ' --smoke (CUDA emulator, fake CuPy)') budget ${BUDGET} s, $(date -u +%FT%TZ)"

# ------------------------------------------------------------------------------------------ 1 build
build() {
  if [ $SMOKE = 1 ]; then
    "$PY" tests/cuda_emu/build.py
    return
  fi
  nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv
  nvcc --version | tail -2
  local arch
  arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d '. ')
  [ -n "$arch" ] || { echo "no compute capability from nvidia-smi"; return 1; }
  rm -f src/tinygpt/_C*.so  # never an extension carried from another machine
  cmake -S . -B build/gpu-session -G Ninja -DCMAKE_BUILD_TYPE=Release -DTINYGPT_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES="$arch" -Dpybind11_DIR="$("$PY" -m pybind11 --cmakedir)" \
    -DPython_EXECUTABLE="$(command -v "$PY")" &&
    cmake --build build/gpu-session -j "$(nproc)" &&
    cp build/gpu-session/_C*.so src/tinygpt/
}
cat >"$TMPD/info.py" <<'EOF'
import sys
import tinygpt as tg
cp = tg.backend.cupy()
rt = cp.cuda.runtime
props = rt.getDeviceProperties(0)
name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
print(f"GPU {name} (sm_{props['major']}{props['minor']}, {props['multiProcessorCount']} SMs); CUDA driver "
      f"{rt.driverGetVersion()}, runtime {rt.runtimeGetVersion()}; CuPy {cp.__version__}")
try:
    import torch
    print(f"PyTorch {torch.__version__}, CUDA {torch.version.cuda}, GPU: {torch.cuda.is_available()}")
except ImportError:
    print("PyTorch: not installed")
info = tg.kernels.available()
print("tinygpt", tg.__version__, "| native:", info["native"], "| CUDA ops:", ", ".join(info["cuda"]) or "NONE")
if not tg.backend.cuda_available() or not info["cuda"]:
    sys.exit("no usable GPU or no CUDA kernels in this build: the later stages run the CuPy reference")
EOF
NATIVE=1
export SMOKE PY
stage build "$(cap 240 310)" "$OUT/build.log" bash -c "$(declare -f build); build" || NATIVE=0
stage versions "$(cap 60 300)" "$OUT/build.log" "${PYRUN[@]}" "$TMPD/info.py" || NATIVE=0
tail -4 "$OUT/build.log"

# ------------------------------------------------------------------------------------------ 2 tests
files=()
for f in tests/test_cuda_*.py tests/ops/test_*.py tests/test_gpu.py; do  # the kernels' own tests first
  [ -e "$f" ] || continue
  [ "$(basename "$f")" = test_cuda_emulator.py ] && continue  # the emulator's own checks: no GPU code
  files+=("$f")
done
REHEARSAL=tests/test_cuda_rehearsal_of_a_failure.py  # --smoke: a missing file, to rehearse the failure path
if [ $SMOKE = 1 ]; then  # the loop as on the GPU, over one quick file and the rehearsal
  note "tests: on the GPU ${#files[@]} files: ${files[*]}"
  files=(tests/ops/test_grad_norm.py $REHEARSAL)
fi
note "tests: ${#files[@]} files (-m $MARK)"
failed=()
kernel_failed=0
for f in "${files[@]}"; do
  stage "test $f" "$(cap 90 320)" "$OUT/tests.log" "$PY" -m pytest -q -p no:cacheprovider -m "$MARK" -rfEs "$f"
  rc=$?
  if [ $rc -ne 0 ] && [ $rc -ne 5 ]; then  # 5: nothing selected in that file
    failed+=("$f")
    case "$f" in */test_gpu.py | $REHEARSAL) ;; *) kernel_failed=1 ;; esac
  fi
done
for f in "${failed[@]}"; do
  CUDA_LAUNCH_BLOCKING=1 stage "rerun $f with CUDA_LAUNCH_BLOCKING=1" "$(cap 60 330)" "$OUT/tests.log" \
    "$PY" -m pytest -q -p no:cacheprovider -m "$MARK" -x -rfE "$f"
done
note "tests: ${#failed[@]} of ${#files[@]} files failed${failed[*]:+: ${failed[*]}}"

# ------------------------------------------------------------------------------------------ 3 train
if [ $SMOKE = 1 ]; then
  train_args=(--n-layer 1 --n-head 2 --n-embd 16 --block-size 16 --batch-size 2 --max-iters 4 --eval-interval 2
              --eval-iters 1 --final-eval-iters 1 --sample-tokens 5)
else  # the preset (5000 iterations, batch 64 x 256); nanoGPT's 200-batch evaluations cost a third of the run
  train_args=(--eval-interval 500 --eval-iters 25 --final-eval-iters 50 --sample-tokens 200 --log-interval 250)
fi
train() {  # train NATIVE(0|1) LIMIT
  local limit=$2
  [ "$limit" -lt 60 ] && [ $SMOKE = 0 ] && { note "train: skipped, ${limit} s left"; return 124; }
  TINYGPT_NATIVE=$1 stage "train (TINYGPT_NATIVE=$1)" "$limit" "$OUT/train.log" "${PYRUN[@]}" \
    examples/train_shakespeare.py --device cuda "${train_args[@]}" --no-plot --no-progress --force \
    --out-dir "$TMPD/train" --time-limit $((limit > 120 ? limit - 60 : limit / 2))
}
[ $kernel_failed = 1 ] && { note "train: a CUDA kernel test failed: training on the CuPy reference"; NATIVE=0; }
if [ $SMOKE = 1 ]; then  # rehearse the fallback's command too (the main run below writes train.json)
  train 0 60 && rm -rf "$TMPD/train"
fi
train $NATIVE "$(cap 240 60)"
rc=$?
if [ $rc -ne 0 ] && [ $NATIVE = 1 ]; then  # the kernels crashed the run: the reference proves the device path
  note "train: the native run failed (exit $rc): again on the CuPy reference"
  rm -rf "$TMPD/train"
  train 0 "$(cap 240 30)"
fi
if [ -f "$TMPD/train/summary.json" ]; then
  cp "$TMPD/train/summary.json" "$OUT/train.json"
  "$PY" - "$OUT/train.json" >>"$OUT/times.txt" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
best = s["best_val_loss"]
print(f"train verdict: best val {best if best is None else round(best, 4)} (target <= 1.47) "
      f"{'MET' if best is not None and best <= 1.47 else 'NOT MET'}; {s['iterations']} iterations in "
      f"{s['wall_time_s']:.0f} s, {s['median_ms_per_iter'] or 0:.1f} ms/iter, {s['tokens_per_s'] or 0:,.0f} tokens/s; "
      f"kernels {s['kernels']}; matmul {s['args']['matmul_precision']}; time-limited {s.get('time_limited')}")
EOF
  tail -1 "$OUT/times.txt"
fi

# ------------------------------------------------------------------------------------------ 4 bench
bench_args=(--part model --no-compile --no-ref --tf32 --steps 10 --warmup 2)
[ $SMOKE = 1 ] && bench_args=(--part model --tiny --no-torch --steps 2 --warmup 1 --copy-mib 4)
stage "bench shakespeare" "$(cap 100 40)" "$OUT/bench.log" "${PYRUN[@]}" benchmarks/gpu.py --config shakespeare \
  "${bench_args[@]}" --json "$OUT/bench-shakespeare.json"
stage "bench gpt2" "$(cap 150 5)" "$OUT/bench.log" "${PYRUN[@]}" benchmarks/gpu.py --config gpt2 \
  "${bench_args[@]}" --json "$OUT/bench-gpt2.json"
grep -A12 "^config " "$OUT/bench.log" | tail -14

note "total $((SECONDS - START)) s; ${#FAILED[@]} stages failed${FAILED[*]:+: ${FAILED[*]}}"
cat "$OUT/times.txt"
[ ${#FAILED[@]} -eq 0 ]
