#!/usr/bin/env bash
# The llama.cpp side of benchmarks/quantized_decode.py: build llama.cpp from source, convert a GPT-2 124M
# Hugging Face checkpoint with llama.cpp's own converter, quantize it to q8_0 and q4_0, and time decode with
# llama-bench (-p 0 -n 64), optionally alternating with tinygpt's benchmark in the same run.
#
# usage: benchmarks/llama_cpp.sh LLAMA_SRC HF_DIR WORK_DIR [THREADS=1,2] [REPS=3] [ROUNDS=1]
#   LLAMA_SRC  a llama.cpp source checkout (we measured commit c392e50); built into LLAMA_SRC/build if
#              build/bin/llama-bench is missing (cmake, Release, static, GGML_NATIVE, OpenMP)
#   HF_DIR     a GPT-2 checkpoint directory (config.json with n_ctx, model.safetensors, tokenizer files);
#              any weights: speed does not depend on their values. benchmarks/gpt2_hf_random.py writes one
#              offline (random weights, GPT-2's vocab.json / merges.txt copied from a directory you give it)
#   WORK_DIR   where the GGUF files go (WORK_DIR/gpt2-{f32,q8_0,q4_0}.gguf; reused when present)
#   THREADS    comma list for llama-bench -t;  REPS: llama-bench -r;  ROUNDS: repetitions of the whole pass
# Environment: PYTHON (the converter's interpreter: needs llama.cpp's requirements-convert_hf_to_gguf.txt,
# default python3; the checkout's own gguf-py works too: PYTHONPATH=LLAMA_SRC/gguf-py plus numpy, torch,
# transformers, sentencepiece and pyyaml), TINYGPT_PYTHON (if set, benchmarks/quantized_decode.py --tests b1 runs after llama-bench
# in every round, once per thread count, so both programs see the same load).
# Prints llama-bench's jsonl lines reduced to: model, threads, median tok/s (min-max) and `uptime` per round.
set -euo pipefail

if [[ $# -lt 3 ]]; then
    sed -n '2,18p' "$0"; exit 2
fi
SRC=$1; HF=$2; WORK=$3; THREADS=${4:-1,2}; REPS=${5:-3}; ROUNDS=${6:-1}
PY=${PYTHON:-python3}
HERE=$(cd "$(dirname "$0")" && pwd)
[[ -f "$SRC/CMakeLists.txt" && -f "$SRC/convert_hf_to_gguf.py" ]] || { echo "error: $SRC is not a llama.cpp checkout" >&2; exit 2; }
[[ -f "$HF/config.json" ]] || { echo "error: $HF has no config.json" >&2; exit 2; }
[[ "$THREADS" =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]] || { echo "error: THREADS must be a comma list, got '$THREADS'" >&2; exit 2; }
mkdir -p "$WORK"

BENCH=$SRC/build/bin/llama-bench
if [[ ! -x "$BENCH" ]]; then
    cmake -S "$SRC" -B "$SRC/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=ON \
        -DGGML_OPENMP=ON -DLLAMA_CURL=OFF -DGGML_BLAS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF
    cmake --build "$SRC/build" --config Release -j"$(nproc)" --target llama-bench llama-quantize
fi

F32=$WORK/gpt2-f32.gguf
[[ -f "$F32" ]] || "$PY" "$SRC/convert_hf_to_gguf.py" "$HF" --outtype f32 --outfile "$F32"
for q in q8_0 q4_0; do  # llama-quantize's defaults: q4_0 keeps the (untied) head in Q6_K
    out=$WORK/gpt2-$q.gguf
    [[ -f "$out" ]] || "$SRC/build/bin/llama-quantize" "$F32" "$out" "${q^^}" 2
done

summary() {  # llama-bench jsonl on stdin -> one line per run
    "${PY}" -c '
import json, statistics, sys, os
for line in sys.stdin:
    if not line.strip():
        continue
    r = json.loads(line)
    ts, name = r["samples_ts"], os.path.basename(r["model_filename"])
    print("llama.cpp %-18s threads %d  tg%d %7.1f tok/s (%.1f-%.1f)"
          % (name, r["n_threads"], r["n_gen"], statistics.median(ts), min(ts), max(ts)))
'
}

for round in $(seq 1 "$ROUNDS"); do
    echo "# round $round, $(date -Is), uptime: $(uptime)"
    for m in "$F32" "$WORK/gpt2-q8_0.gguf" "$WORK/gpt2-q4_0.gguf"; do
        "$BENCH" -m "$m" -p 0 -n 64 -t "$THREADS" -r "$REPS" -o jsonl 2>/dev/null | summary
    done
    if [[ -n "${TINYGPT_PYTHON:-}" ]]; then
        IFS=, read -ra ts <<< "$THREADS"
        for t in "${ts[@]}"; do
            "$TINYGPT_PYTHON" "$HERE/quantized_decode.py" --threads "$t" --tests b1 --reps "$REPS"
        done
    fi
done
