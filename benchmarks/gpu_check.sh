#!/usr/bin/env bash
# What one short GPU lease should tell about this recipe, in one command of at most 9 minutes on one H100/H200.
#
#   bash benchmarks/gpu_check.sh --download-wheels   # before the lease, on a machine with PyPI: .whl/ (~16 MB)
#   bash benchmarks/gpu_check.sh --cpu-rehearsal     # the same phases on a CPU with the tiny model (~2 minutes)
#   bash benchmarks/gpu_check.sh                     # on the GPU; --budget S (default 540), key=value to all phases
#
# Phases, in this order, each under its own `timeout` inside the global budget; a phase that would not fit is
# not started, one that runs out of time is stopped (SIGTERM: train.py saves a checkpoint and exits) and the
# script moves on; the summary says what was cut:
#   setup     install .whl/ into /tmp/site (GPU mode), the machine and the versions, the recipe imports
#   defaults  python train.py as it is (8 x 2,048 x 4 accumulation, bf16, `auto`), 70 steps without evaluation,
#             checkpoints or samples: the precision/speed/attention lines, the time to the first step (the
#             compile), tokens/s, MFU and peak memory of the 60 steps after step 10
#   baseline  python benchmarks/bench.py --vs-baseline: the recipe / hand-written loop ratio, same settings (goal >= 0.95);
#             deferred to after `resume` when the seeds' run, estimated from `defaults`, would not fit otherwise
#   seeds     the seeds' run: tiny Shakespeare, the full model, 5,000 steps of 8 x 1,024 tokens, evaluation,
#             samples and a checkpoint every 500 steps (the YAML's defaults)
#   resume    python train.py --resume (same overrides): 50 more steps at lr/10, evaluated at their end; if the
#             seeds' run was cut at step S, from checkpoint-S with training.max_steps=S
#   switches  benchmarks/bench.py, 20 steps each: compile off, Liger's fused linear cross-entropy, checkpointing on, the
#             attention (attn_implementation=sdpa where flash-attn makes the default differ)
#
# Output folder: $OUT when set (the device machine's), else --out DIR, else gpu_check_out/. At most 6 files:
#   summary.md (grows phase by phase), log.txt (every line of every phase, time-stamped from the start),
#   loss_curve.png, samples.txt, switches.md, env.txt.
# Run folders, checkpoints and the data cache go to --work DIR (default: a new folder under /tmp). --phases LIST
# runs only those (setup always runs; e.g. --phases baseline,switches); GPU_CHECK_<NAME>=N sets one of the
# time limits and step counts below (e.g. GPU_CHECK_P3_CAP=300). Python is $PYTHON, else python3.
# Exit status: 0 every phase ran and passed its checks; 3 some were cut or not started for time; 1 a phase
# failed (it exited non-zero, or exited 0 without what it should have written); 2 bad arguments.
set -u -o pipefail
cd "$(dirname "$0")/.." || exit 2
REPO=$PWD
HELPER=benchmarks/gpu_report.py

usage() { sed -n '2,/^set -u/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

MODE=gpu OUT_ARG="" WORK="" BUDGET="" PHASES="defaults,baseline,seeds,resume,switches" EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu-rehearsal) MODE=rehearsal ;;
    --download-wheels) MODE=wheels ;;
    --out) OUT_ARG=${2:?--out needs a folder}; shift ;;
    --out=*) OUT_ARG=${1#*=} ;;
    --work) WORK=${2:?--work needs a folder}; shift ;;
    --work=*) WORK=${1#*=} ;;
    --budget) BUDGET=${2:?--budget needs seconds}; shift ;;
    --budget=*) BUDGET=${1#*=} ;;
    --phases) PHASES=${2:?--phases needs a list}; shift ;;
    --phases=*) PHASES=${1#*=} ;;
    -h | --help) usage; exit 0 ;;
    *=*) EXTRA+=("$1") ;;
    *) echo "error: unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
PY=${PYTHON:-python3}
for phase in ${PHASES//,/ }; do
  case $phase in setup | defaults | baseline | seeds | resume | switches) ;;
    *) echo "error: --phases: no phase '$phase' (setup, defaults, baseline, seeds, resume, switches)" >&2; exit 2 ;;
  esac
done

# --- wheels: what the GPU image lacks (KINDS.md: torch 2.11, transformers 5.17, no datasets) ---------------
# transformers >= 5.23 (requirements.txt; 5.24.0 is what the CPU tests run), datasets with the two it needs
# that the image has not (dill, multiprocess), fsspec at the newest version datasets accepts, regex at the
# version transformers checks on import, liger-kernel for the Liger switch (0.8.5 ran on an H100 with torch
# 2.11 and Triton 3.6). The image has huggingface-hub 1.33, tokenizers 0.23.2, safetensors 0.8, accelerate
# 1.15, pyarrow, pandas, xxhash, typer, matplotlib: new enough for these.
WHEELS=(transformers==5.24.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 fsspec==2026.9.0 regex==2026.5.9
  liger-kernel==0.8.5 dacite==1.9.2)
PLATFORM=(--python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)

if [ "$MODE" = wheels ]; then
  exclude="$(git rev-parse --git-common-dir)/info/exclude"
  mkdir -p "$(dirname "$exclude")" && touch "$exclude"
  grep -qxF '/.whl/' "$exclude" || echo '/.whl/' >>"$exclude"
  tmp=$(mktemp -d) || exit 1
  "$PY" -m pip download -q --no-deps --only-binary=:all: "${PLATFORM[@]}" -d "$tmp" "${WHEELS[@]}" || exit 1
  mkdir -p .whl && rm -f .whl/*.whl && mv "$tmp"/*.whl .whl/ && rmdir "$tmp"
  # the install the GPU mode runs, for Python 3.12 on x86-64, without installing anything here
  "$PY" -m pip install -q --dry-run --ignore-installed --no-index --no-deps --only-binary=:all: "${PLATFORM[@]}" \
    --target "$(mktemp -d)" .whl/*.whl || { echo "error: the wheels do not install as a set" >&2; exit 1; }
  ls -l .whl && du -sh .whl
  git check-ignore -q .whl/x.whl && echo ".whl/ is ignored by git ($exclude); name it in carry: [\".whl\"]"
  exit 0
fi

# --- the settings of each mode -------------------------------------------------------------------------------
TINY=() SHAPE=() P1_EXTRA=() SEEDS=()
if [ "$MODE" = gpu ]; then
  BUDGET=${BUDGET:-540} END_RESERVE=15 GRACE=30 SETUP_CAP=150
  P1_STEPS=70 P1_AFTER=10 P1_CAP=200 P1_MIN=60 RESERVE_AFTER_P1=260
  P2_STEPS=10 P2_WARMUP=3 P2_CAP=150 P2_MIN=60
  SEEDS_TOKENS=40960000 P3_AFTER=10 P3_CAP=450 P3_MIN=90 P3_OVERHEAD=150 P3_DEFAULT=300
  P4_CAP=150 P4_MIN=45 P4_RESERVE=80
  P5_STEPS=20 P5_WARMUP=3 P5_CAP=120 P5_MIN=45
  SEEDS=(data.block_size=1024 training.gradient_accumulation_steps=1)
  P1_SHAPE="8 x 2,048 tokens x 4 accumulation" SEEDS_SHAPE="the full model, 5,000 steps of 8 x 1,024 tokens"
else
  BUDGET=${BUDGET:-300} END_RESERVE=5 GRACE=10 SETUP_CAP=60
  P1_STEPS=4 P1_AFTER=1 P1_CAP=60 P1_MIN=5 RESERVE_AFTER_P1=30
  P2_STEPS=3 P2_WARMUP=1 P2_CAP=60 P2_MIN=5
  SEEDS_TOKENS=20480 P3_AFTER=2 P3_CAP=120 P3_MIN=5 P3_OVERHEAD=15 P3_DEFAULT=40
  P4_CAP=60 P4_MIN=5 P4_RESERVE=15
  P5_STEPS=2 P5_WARMUP=1 P5_CAP=45 P5_MIN=5
  # config_quickstart.yaml's model, the real YAML's batch, a handful of steps
  TINY=(model.num_hidden_layers=2 model.hidden_size=64 model.intermediate_size=128 model.num_attention_heads=4
    model.num_key_value_heads=2 data.max_validation_blocks=8 samples.max_new_tokens=8)
  SHAPE=(data.block_size=128 training.per_device_train_batch_size=2)
  P1_EXTRA=(training.logging_steps=1)
  SEEDS=(data.block_size=128 training.gradient_accumulation_steps=1 training.max_steps=20 training.warmup_steps=2
    training.learning_rate=1.0e-3 training.logging_steps=1 training.eval_steps=10 training.save_steps=10
    samples.every_n_steps=10 resume.extra_steps=5)
  P1_SHAPE="the tiny model, 2 x 128 tokens x 4 accumulation" SEEDS_SHAPE="the tiny model, 20 steps of 8 x 128 tokens"
fi
# GPU_CHECK_<NAME>=N in the environment sets one of the numbers above, e.g. GPU_CHECK_P3_CAP=300
CONSTANTS=" END_RESERVE GRACE SETUP_CAP P1_STEPS P1_AFTER P1_CAP P1_MIN RESERVE_AFTER_P1 P2_STEPS P2_WARMUP P2_CAP P2_MIN
  SEEDS_TOKENS P3_AFTER P3_CAP P3_MIN P3_OVERHEAD P3_DEFAULT P4_CAP P4_MIN P4_RESERVE P5_STEPS P5_WARMUP P5_CAP P5_MIN "
for var in "${!GPU_CHECK_@}"; do
  name=${var#GPU_CHECK_}
  case " ${CONSTANTS//$'\n'/ } " in *" $name "*) ;; *) echo "error: $var: no such setting (one of:$(tr -s ' \n' ' ' <<<"$CONSTANTS"))" >&2; exit 2 ;; esac
  case "${!var}" in '' | *[!0-9]*) echo "error: $var takes whole seconds or steps, not '${!var}'" >&2; exit 2 ;; esac
  printf -v "$name" '%s' "${!var}"
done
case "$BUDGET" in '' | *[!0-9]*) echo "error: --budget takes whole seconds, not '$BUDGET'" >&2; exit 2 ;; esac

OUT_DIR=${OUT:-${OUT_ARG:-gpu_check_out}}
mkdir -p "$OUT_DIR" || exit 2
OUT_DIR=$(cd "$OUT_DIR" && pwd)
if [ -z "$WORK" ]; then WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX") || exit 2; fi
mkdir -p "$WORK" || exit 2
WORK=$(cd "$WORK" && pwd)
SUMMARY=$OUT_DIR/summary.md LOG=$OUT_DIR/log.txt SWITCHES=$OUT_DIR/switches.md
rm -f "$SUMMARY" "$LOG" "$SWITCHES" "$OUT_DIR/loss_curve.png" "$OUT_DIR/samples.txt" "$OUT_DIR/env.txt"

export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=disabled
export HF_DATASETS_DISABLE_PROGRESS_BARS=1 TORCHINDUCTOR_FX_GRAPH_CACHE=1 TORCHINDUCTOR_AUTOGRAD_CACHE=1
COMMON=(training.report_to=none training.disable_tqdm=true "data.cache_dir=$WORK/cache")

# --- time -----------------------------------------------------------------------------------------------------
now_us() { local t=$EPOCHREALTIME; t=${t//[.,]/}; echo $((10#$t)); }
T0=$(now_us)
DEADLINE=$((T0 + BUDGET * 1000000))
secs() { local us=$1; printf '%d.%d' $((us / 1000000)) $((us % 1000000 / 100000)); }  # microseconds -> "12.3"
elapsed() { secs $(($(now_us) - T0)); }
left() { echo $(((DEADLINE - $(now_us)) / 1000000)); }
# limit CAP RESERVE: the seconds a phase may run, keeping RESERVE for the phases after it, the final report,
# and the grace a stopped phase takes to save and exit
limit() { local l=$(($(left) - END_RESERVE - GRACE - $2)); echo $((l < $1 ? l : $1)); }

# stamp FILE: each line of stdin to FILE, log.txt and stdout, as "[  12.3s] line" (seconds since the start); builtins
# only, so that a phase's output is not slowed by a fork per line
stamp() {
  local line t us
  while IFS= read -r line || [ -n "$line" ]; do
    line=${line##*$'\r'}
    t=$EPOCHREALTIME t=${t//[.,]/} us=$((10#$t - T0))
    printf -v line '[%6d.%ds] %s' $((us / 1000000)) $((us % 1000000 / 100000)) "$line"
    printf '%s\n' "$line" >>"$LOG"
    printf '%s\n' "$line" >>"$1"
    printf '%s\n' "$line"
  done
}
say() { echo "$*" | stamp "$WORK/script.log"; }
md() { printf '%s\n' "$@" >>"$SUMMARY"; }

# run NAME SECONDS CMD...: CMD under `timeout` (SIGTERM at SECONDS, SIGKILL GRACE later), its output stamped
# into $WORK/NAME.log and log.txt. Sets RC (124/137: stopped by the timeout) and WALL (seconds).
run() {
  local name=$1 seconds=$2 t0
  shift 2
  t0=$(now_us)
  : >"$WORK/$name.log"
  echo "=== $name (timeout ${seconds} s): $*" | stamp "$WORK/$name.log"
  timeout -k "$GRACE" "$seconds" "$@" 2>&1 | stamp "$WORK/$name.log"
  RC=${PIPESTATUS[0]}
  WALL=$(secs $(($(now_us) - t0)))
  echo "=== $name: exit $RC after $WALL s" | stamp "$WORK/$name.log"
}

STATUS_ROWS=() CUT=() FAILED=()
# report NAME TITLE HELPER-ARGS...: the phase's section of summary.md from RC, WALL and gpu_report.py
report() {
  local name=$1 title=$2 status note="" partial=() body checkrc
  shift 2
  case $RC in
    0) status=ok ;;
    124 | 137) status=cut note="stopped by its timeout after $WALL s"; partial=(--partial) ;;
    *) status=failed note="exit status $RC (see log.txt)"; partial=(--partial) ;;
  esac
  body=$("$PY" "$HELPER" "$@" "${partial[@]}" 2>"$WORK/$name.check")
  checkrc=$?
  if [ "$status" = cut ] && [ -n "$(envval "$name" last_step)" ]; then note+=" at step $(envval "$name" last_step)"; fi
  if [ $checkrc -ne 0 ] && [ "$status" = ok ]; then
    status=failed note="exited 0 but $(tr '\n' ' ' <"$WORK/$name.check")"
  fi
  record "$name" "$status" "$WALL" "$note"
  md "" "## $title: $status, $WALL s${note:+ ($note)}" "" "$body"
}
record() {  # record NAME STATUS WALL NOTE
  STATUS_ROWS+=("| $1 | $2 | $3 | $4 |")
  case $2 in cut | "not started") CUT+=("$1: $4") ;; failed) FAILED+=("$1: $4") ;; esac
  say "phase $1: $2${4:+ ($4)}"
}
not_started() {  # not_started NAME TITLE SECONDS MIN [WHY]
  local why=${5:-"only $3 s of the budget were left for it, it needs at least $4"}
  record "$1" "not started" 0 "$why"
  md "" "## $2: not started ($why)"
}
wanted() { [[ ",$PHASES," == *",$1,"* ]]; }
envval() { sed -n "s/^$2=//p" "$WORK/$1.env" 2>/dev/null | head -1; }

trap 'md "" "**interrupted at $(elapsed) s**"; exit 130' INT TERM

# --- the run ------------------------------------------------------------------------------------------------
md "# GPU check of smollm2-recipe ($MODE mode)" ""
commit="not a git checkout"
if git rev-parse --short HEAD >/dev/null 2>&1; then
  commit="commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . 2>/dev/null || echo ' with local changes')"
fi
md "- started $(date -u '+%Y-%m-%d %H:%M UTC'), $commit; budget $BUDGET s; phases: $PHASES"
md "- output: summary.md, log.txt (time-stamped), loss_curve.png, samples.txt, switches.md, env.txt; work folder $WORK"
[ ${#EXTRA[@]} -gt 0 ] && md "- extra overrides for every phase: ${EXTRA[*]}"

# setup: the wheels, the machine, the versions, the recipe imports
finish() {
  md "" "## Phases" "" "| phase | status | wall (s) | note |" "| --- | --- | ---: | --- |" "${STATUS_ROWS[@]}" ""
  [ ${#CUT[@]} -gt 0 ] && md "**Cut for time:** $(printf '%s; ' "${CUT[@]}")" ""
  [ ${#FAILED[@]} -gt 0 ] && md "**Failed:** $(printf '%s; ' "${FAILED[@]}")" ""
  md "Total: $(elapsed) s of a budget of $BUDGET s."
  say "done in $(elapsed) s: $SUMMARY"
  if [ ${#FAILED[@]} -gt 0 ]; then exit 1; fi
  if [ ${#CUT[@]} -gt 0 ]; then exit 3; fi
  exit 0
}
t0=$(now_us)
RC=0
if [ "$MODE" = gpu ] && compgen -G ".whl/*.whl" >/dev/null; then
  run wheels "$(limit "$SETUP_CAP" 0)" "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
if [ "$RC" -eq 0 ]; then
  {
    command -v nvidia-smi >/dev/null &&
      nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit --format=csv 2>&1
    "$PY" -m pip list 2>/dev/null
  } >"$OUT_DIR/env.txt"
  run setup "$(limit "$SETUP_CAP" 0)" "$PY" "$HELPER" env --mode "$MODE" --repo "$REPO"
fi
WALL=$(secs $(($(now_us) - t0)))
if [ "$RC" -eq 0 ]; then
  record setup ok "$WALL" ""
  md "" "## setup: ok, $WALL s" ""
else
  why=$(sed -n 's/^\[ *[0-9.]*s\] check failed: //p' "$WORK/setup.log" 2>/dev/null | head -1)
  [ -z "$why" ] && [ -f "$WORK/wheels.log" ] &&
    why="pip install of .whl/ exited $RC: $(sed -n 's/^\[ *[0-9.]*s\] \(ERROR: .*\)$/\1/p' "$WORK/wheels.log" | head -1)"
  record setup failed "$WALL" "${why:-exit status $RC (see log.txt)}"
  md "" "## setup: failed, $WALL s (${why:-exit status $RC, see log.txt})" ""
fi
sed -n 's/^\[ *[0-9.]*s\] \(- .*\)$/\1/p' "$WORK/setup.log" 2>/dev/null >>"$SUMMARY"
if [ "$RC" -ne 0 ]; then
  md "" "**stopped: the recipe cannot run here**"
  finish
fi

phase_defaults() {
  local title="1. defaults: python train.py, $P1_SHAPE, $P1_STEPS steps" s
  s=$(limit "$P1_CAP" "$RESERVE_AFTER_P1")
  if [ "$s" -lt "$P1_MIN" ]; then not_started defaults "$title" "$s" "$P1_MIN"; return; fi
  rm -rf "$WORK/defaults"
  run defaults "$s" "$PY" train.py --no-prompt "${TINY[@]}" "${SHAPE[@]}" "training.max_steps=$P1_STEPS" \
    training.eval_strategy=no training.save_strategy=no samples.every_n_steps=0 "${P1_EXTRA[@]}" "${COMMON[@]}" \
    "training.output_dir=$WORK/defaults" "${EXTRA[@]}"
  report defaults "$title" train "$WORK/defaults.log" --after "$P1_AFTER" --max-steps "$P1_STEPS" \
    --env-out "$WORK/defaults.env"
}

BASELINE_TOKPS=0
phase_baseline() {
  local title="2. the recipe vs a hand-written loop: benchmarks/bench.py --vs-baseline, same settings" s
  s=$(limit "$P2_CAP" "${1:-0}")
  if [ "$s" -lt "$P2_MIN" ]; then
    [ -n "${2:-}" ] && return 1  # the caller defers it
    not_started baseline "$title" "$s" "$P2_MIN"
    return 0
  fi
  run baseline "$s" "$PY" benchmarks/bench.py --vs-baseline --steps "$P2_STEPS" --warmup "$P2_WARMUP" "${TINY[@]}" \
    "${SHAPE[@]}" "data.cache_dir=$WORK/cache" "${EXTRA[@]}"
  report baseline "$title" bench "$WORK/baseline.log" --vs-baseline --env-out "$WORK/baseline.env"
  BASELINE_TOKPS=$(envval baseline tokps)
}

SEEDS_ARGS=()
phase_seeds() {
  local title="3. the seeds' run: tiny Shakespeare, $SEEDS_SHAPE" s
  s=$(limit "$P3_CAP" "$P4_RESERVE")
  if [ "$s" -lt "$P3_MIN" ]; then not_started seeds "$title" "$s" "$P3_MIN"; return; fi
  rm -rf "$WORK/seeds"
  SEEDS_ARGS=("${TINY[@]}" "${SEEDS[@]}" "${COMMON[@]}" training.save_total_limit=1 "training.output_dir=$WORK/seeds"
    "${EXTRA[@]}")
  run seeds "$s" "$PY" train.py --no-prompt "${SEEDS_ARGS[@]}"
  report seeds "$title" seeds "$WORK/seeds" "$WORK/seeds.log" --out "$OUT_DIR" --after "$P3_AFTER" \
    --env-out "$WORK/seeds.env"
}

phase_resume() {
  local title="4. --resume: the extra steps at lr/10" s start extra cut logging more=()
  if [ ${#SEEDS_ARGS[@]} -eq 0 ]; then
    not_started resume "$title" 0 0 "the seeds' run did not run"
    return
  fi
  read -r start extra cut logging < <("$PY" "$HELPER" resume-plan "$WORK/seeds")
  if [ "${start:-0}" -eq 0 ]; then
    RC=1 WALL=0
    record resume failed 0 "the seeds' run left no complete checkpoint"
    md "" "## $title: failed (the seeds' run left no complete checkpoint)"
    return
  fi
  # a cut run ended there: the extra phase starts from it, logging its last step
  [ "$cut" = 1 ] && more=("training.max_steps=$start" "training.logging_steps=$logging")
  title="4. --resume from checkpoint-$start: $extra steps at lr/10"
  s=$(limit "$P4_CAP" 0)
  if [ "$s" -lt "$P4_MIN" ]; then not_started resume "$title" "$s" "$P4_MIN"; return; fi
  run resume "$s" "$PY" train.py --resume --no-prompt "${SEEDS_ARGS[@]}" "${more[@]}" \
    "training.eval_steps=$((start + extra))"
  report resume "$title" resume "$WORK/seeds" "$WORK/resume.log" --seeds-log "$WORK/seeds.log" --out "$OUT_DIR" \
    --start "$start" --extra "$extra"
}

phase_switches() {
  local title="5. switches: benchmarks/bench.py, $P5_STEPS steps each after $P5_WARMUP warm-up" flce attn_note="" i s label switch
  flce="training.use_liger_kernel=true training.liger_kernel_config.rope=false training.liger_kernel_config.rms_norm=false training.liger_kernel_config.swiglu=false"
  local labels=("compile off" "Liger fused linear cross-entropy on" "activation checkpointing on")
  local switches=("training.torch_compile=false" "$flce" "training.activation_checkpointing=true")
  if grep -q "attention: sdpa_causal" "$WORK"/defaults.log "$WORK"/baseline.log 2>/dev/null ||
    ! { [ -f "$WORK/defaults.log" ] || [ -f "$WORK/baseline.log" ]; }; then
    attn_note="The default attn_implementation (flash_attention_2) fell back to sdpa here (flash-attn is not installed), which the recipe runs as its causal SDPA, so \`attn_implementation=sdpa\` is the default itself; the attention row is transformers' own sdpa with its masks instead (\`data.document_aware=true\`, which keeps plain sdpa; tiny Shakespeare is one document, so the blocks are the same)."
    labels+=("transformers' sdpa with masks")
    switches+=("data.document_aware=true")
  else
    labels+=("attn_implementation=sdpa (vs flash_attention_2)")
    switches+=("attn_implementation=sdpa")
  fi
  {
    echo "# Switches: benchmarks/bench.py, $P5_STEPS optimizer steps each after $P5_WARMUP warm-up ($MODE mode)"
    echo
    echo "Each row is one benchmarks/bench.py process at the default shape with one switch; 'vs default' divides by the recipe row of phase 2 (benchmarks/bench.py --vs-baseline, the plain defaults)."
    [ -n "$attn_note" ] && echo && echo "$attn_note"
    echo
    echo "| switch | override (settings as benchmarks/bench.py reports them) | tokens/s | MFU | peak memory (GB) | vs default | wall (s) | status |"
    echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"
    if [ -f "$WORK/baseline.log" ]; then
      "$PY" "$HELPER" switch "default (phase 2)" "(none)" "$WORK/baseline.log" --default-tokps "${BASELINE_TOKPS:-0}" --partial
    fi
  } >"$SWITCHES"
  md "" "## $title: see switches.md"
  for i in "${!labels[@]}"; do
    label=${labels[$i]} switch=${switches[$i]}
    if [[ "$switch" == *use_liger_kernel* ]] && ! "$PY" -c 'import importlib.util as u, sys; sys.exit(u.find_spec("liger_kernel") is None)'; then
      record "switch: $label" skipped 0 "liger-kernel is not installed"
      echo "| $label | \`$switch\` | | | | | | skipped: liger-kernel is not installed |" >>"$SWITCHES"
      continue
    fi
    s=$(limit "$P5_CAP" 0)
    if [ "$s" -lt "$P5_MIN" ]; then
      record "switch: $label" "not started" 0 "only $s s were left, a row needs at least $P5_MIN"
      echo "| $label | \`$switch\` | | | | | | not started (time) |" >>"$SWITCHES"
      continue
    fi
    # shellcheck disable=SC2086  # $switch holds several overrides
    run "switch$i" "$s" "$PY" benchmarks/bench.py --steps "$P5_STEPS" --warmup "$P5_WARMUP" "${TINY[@]}" "${SHAPE[@]}" \
      "data.cache_dir=$WORK/cache" $switch "${EXTRA[@]}"
    local status=ok note=""
    case $RC in 0) ;; 124 | 137) status=cut note="stopped by its timeout after $WALL s" ;; *) status=failed note="exit status $RC" ;; esac
    if ! "$PY" "$HELPER" switch "$label" "$switch" "$WORK/switch$i.log" --default-tokps "${BASELINE_TOKPS:-0}" \
      --wall "$WALL" --status "$status${note:+: $note}" >>"$SWITCHES" && [ "$status" = ok ]; then
      status=failed note="exited 0 without a recipe row"
    fi
    record "switch: $label" "$status" "$WALL" "$note"
  done
}

wanted defaults && phase_defaults
DEFERRED=""
if wanted baseline; then
  # keep what the seeds' run and --resume should take, estimated from the throughput of `defaults`
  tokps=$(envval defaults tokps)
  est=$("$PY" "$HELPER" estimate --tokens "$SEEDS_TOKENS" --tokps "${tokps:-0}" \
    --overhead "$P3_OVERHEAD" --default "$P3_DEFAULT")
  wanted seeds || est=0
  reserve=$((est + (est > 0 ? P4_RESERVE + GRACE : 0)))
  if ! phase_baseline "$reserve" defer; then
    DEFERRED=1
    say "baseline: deferred to after resume (the seeds' run is estimated at $est s; $(left) s are left)"
    md "" "_Phase 2 deferred to after phase 4: the seeds' run is estimated at $est s from phase 1, and $(left) s were left._"
  fi
fi
wanted seeds && phase_seeds
wanted resume && phase_resume
[ -n "$DEFERRED" ] && phase_baseline 0
wanted switches && phase_switches

# --- the end -------------------------------------------------------------------------------------------------
finish
