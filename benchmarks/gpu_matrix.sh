#!/usr/bin/env bash
# The GPU table of BENCHMARKS.md: benchmarks/bench.py once per fast-path switch, the real model at micro-batch 8 x 2048
# tokens, gradient accumulation 4, bf16. One process per row, so that compilation and kernel patches do not leak.
#   bash benchmarks/gpu_matrix.sh tokenizer=... data.path=...   (extra arguments go to every row)
# Full output goes to $LOG (default bench_gpu.log); the table rows are printed. SDPA rows run the recipe's
# causal SDPA (sdpa_causal), except with data.document_aware, which keeps transformers' sdpa and its masks.
set -u
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
STEPS=${STEPS:-10}
WARMUP=${WARMUP:-3}
LOG=${LOG:-bench_gpu.log}
EXTRA=("$@")
row() {
  echo "### $*" | tee -a "$LOG"
  if "$PYTHON" benchmarks/bench.py --steps "$STEPS" --warmup "$WARMUP" "${EXTRA[@]}" "$@" >>"$LOG" 2>&1; then
    grep -E "^\| (recipe|baseline)|^ratio" "$LOG" | tail -n "$([[ " $* " == *" --vs-baseline "* ]] && echo 3 || echo 1)"
  else
    echo "failed (see $LOG): $*"
  fi
}
FLCE_ONLY="training.liger_kernel_config.rope=false training.liger_kernel_config.rms_norm=false training.liger_kernel_config.swiglu=false"
row --vs-baseline   # the YAML defaults: torch_compile and activation_checkpointing `auto`, chosen for the GPU
row training.torch_compile=false training.activation_checkpointing=true
row training.torch_compile=false training.activation_checkpointing=false --vs-baseline
row training.activation_checkpointing=false training.torch_compile=true
row training.activation_checkpointing=false training.torch_compile=false training.use_liger_kernel=true
row training.activation_checkpointing=false training.torch_compile=true training.use_liger_kernel=true $FLCE_ONLY
row training.activation_checkpointing=true training.torch_compile=true
row training.activation_checkpointing=false training.torch_compile=true data.document_aware=true
