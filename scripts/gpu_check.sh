#!/usr/bin/env bash
# The GPU check of issue 21 in one command: install the project, run the CUDA tests, measure the
# cascade (ultrastyle bench), the single-image CLI file to file, stroke scale and the batch job
# with GPU actors, and write gpu_check.json + gpu_check.md (docs/gpu.md describes both).
#
# usage: scripts/gpu_check.sh [--current-python] [--wheels DIR] [--budget SECONDS] [--only STEPS] [--cpu]
#                             [OUTDIR]
#
#   OUTDIR            where the report goes (default: $OUT, else ./gpu_check_out)
#   --current-python  run with ${PYTHON:-python3} as it is, the project from this tree on
#                     PYTHONPATH (no venv, no install)
#   --wheels DIR      install offline: the wheels in DIR, then this tree, with --no-index --no-deps
#                     (a machine that reaches no registry; scripts/gpu_wheels.py fills DIR)
#   --budget SECONDS  the whole run's time limit (default 450); each step gets a share
#   --only STEPS      run only these of cuda_tests,bench,cli,stroke_scale,batch (comma-separated;
#                     install and inputs always run): a rerun after a fix
#   --cpu             the CPU run at small sizes even where torch sees a CUDA GPU
#
# Without either option it creates a venv that also sees ${PYTHON:-python3}'s own packages (so
# a torch built for the machine's CUDA is used, not downloaded) and runs pip install -e ".[test]".
# With a CUDA GPU it measures at 3840x2160 and 10240x4096; without one it runs the same steps on
# the CPU at 256x256 and 512x256 so that CI proves the script. Every step runs to its own time
# limit, and a failed step does not stop the next; the report is rewritten after each step, so
# it holds what was measured even if the run is cut short. Exit status: 0 when no step failed or
# timed out, 1 otherwise, 2 for a bad option.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BASE_PY=${PYTHON:-python3}
OUTDIR=${OUT:-$PWD/gpu_check_out}
USE_CURRENT=0
FORCE_CPU=0
ONLY=""
WHEELS=""
BUDGET=450

die() { echo "gpu_check: error: $*" >&2; exit 2; }
while (($#)); do
  case $1 in
    --current-python) USE_CURRENT=1 ;;
    --cpu) FORCE_CPU=1 ;;
    --only)
      (($# > 1)) || die "--only needs a list of steps"
      IFS=, read -ra picked <<<"$2"
      for step in "${picked[@]}"; do
        [[ ,cuda_tests,bench,cli,stroke_scale,batch, == *",$step,"* ]] ||
          die "--only: no step '$step' (steps: cuda_tests,bench,cli,stroke_scale,batch)"
      done
      ONLY=,$2,; shift ;;
    --wheels)
      (($# > 1)) || die "--wheels needs a folder"
      [[ -d $2 ]] || die "--wheels: no such folder: $2"
      WHEELS=$(cd "$2" && pwd); shift ;;
    --budget)
      (($# > 1)) && [[ $2 =~ ^[0-9]+$ ]] || die "--budget needs a whole number of seconds"
      BUDGET=$2; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) OUTDIR=$1 ;;
  esac
  shift
done
mkdir -p "$OUTDIR" || die "cannot create the output folder $OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
command -v "$BASE_PY" >/dev/null || die "no Python interpreter $BASE_PY (set PYTHON)"
cd "$ROOT"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
RES=$WORK/results
LOGS=$WORK/logs
VENV=$WORK/venv
mkdir -p "$RES"/{bench,cli,stroke_scale,batch} "$LOGS" "$WORK/in"
DEADLINE=$((SECONDS + BUDGET))
START=$EPOCHREALTIME
STARTED_AT=$(date -u +%Y-%m-%dT%H:%M:%SZ)
PY=$BASE_PY
INTERPRETER="current: $BASE_PY"

# The order of the steps, each one's time limit and the time kept back for the steps after it, in
# seconds of the default 450 s budget (scaled with --budget).
STEPS=(install inputs cuda_tests bench cli stroke_scale batch)
declare -A CAP=([install]=150 [inputs]=60 [cuda_tests]=150 [bench]=220 [cli]=100 [stroke_scale]=60 [batch]=150)
declare -A FLOOR=([install]=0 [inputs]=10 [cuda_tests]=30 [bench]=60 [cli]=30 [stroke_scale]=20 [batch]=60)
NOT_AVAILABLE=3  # a step's exit status for "the flag or tool it measures does not exist here"
SKIPPED=4        # ... for "not run, by choice" (the reason says why)

say() { echo "gpu_check: $*"; }
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }'; }
# record PREFIX STATUS SECONDS REASON: what a step or run did, as PREFIX.{status,seconds,reason}.
record() {
  printf '%s\n' "$2" >"$1.status"
  printf '%s\n' "$3" >"$1.seconds"
  printf '%s\n' "$4" >"$1.reason"
}
# tmo CMD...: CMD under the time left to the current step (exit 124 when it runs out).
tmo() {
  local left=$((STEP_END - SECONDS))
  ((left > 0)) || return 124
  timeout -k 10 "$left" "$@"
}
# The last line of a log that says something (a failed command's error), one line.
last_line() { grep -v '^[[:space:]]*$' "$1" 2>/dev/null | tail -n 1 | cut -c1-300 || true; }
ultrastyle() { "$PY" -m jobs.cli "$@"; }  # the console script's own entry point

report() {
  awk -v a="$START" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f\n", b - a }' >"$WORK/seconds"
  for name in "${STEPS[@]}"; do
    [[ -f $LOGS/$name.log ]] || continue
    echo "===== $name"
    tail -n 3000 "$LOGS/$name.log"
  done >"$OUTDIR/gpu_check.log"
  "$BASE_PY" "$ROOT/scripts/gpu_check_report.py" "$WORK" "$OUTDIR" >"$WORK/report.out" 2>&1 ||
    say "the report could not be written: $(last_line "$WORK/report.out")"
}

finish() {
  local rc=$?
  report
  cat "$WORK/report.out" 2>/dev/null || true
  if ((rc == 0)) && grep -qxE 'failed|timeout' "$RES"/*.status 2>/dev/null; then rc=1; fi
  rm -rf "$WORK"
  exit "$rc"
}
trap finish EXIT
trap 'exit 143' TERM INT

# run_step NAME: step_NAME in a subshell with its own time limit and log; one failing step does
# not stop the others.
run_step() {
  local name=$1 reserve=0 later=0 left budget rc t0 status reason
  if [[ -n $ONLY && $name != install && $name != inputs && $ONLY != *",$name,"* ]]; then
    record "$RES/$name" skipped 0 "not selected (--only ${ONLY:1:-1})"
    return 0
  fi
  for s in "${STEPS[@]}"; do
    ((later)) && reserve=$((reserve + FLOOR[$s]))
    [[ $s == "$name" ]] && later=1
  done
  left=$((DEADLINE - SECONDS - reserve * BUDGET / 450))
  budget=$((CAP[$name] * BUDGET / 450))
  budget=$((budget < left ? budget : left))
  if ((budget < 10)); then
    record "$RES/$name" skipped 0 "no time left in the ${BUDGET} s budget"
    say "$name: skipped (no time left)"
    return 0
  fi
  STEP_END=$((SECONDS + budget))
  say "$name: running (at most $budget s)"
  t0=$EPOCHREALTIME
  set +e
  (set -e; "step_$name") >"$LOGS/$name.log" 2>&1
  rc=$?
  set -e
  reason=$(cat "$RES/$name.why" 2>/dev/null || true)
  case $rc in
    0) status=ok reason="" ;;
    "$NOT_AVAILABLE") status="not available" ;;
    "$SKIPPED") status=skipped ;;
    124 | 137) status=timeout reason=${reason:-"stopped at its $budget s limit"} ;;
    *) status=failed reason=${reason:-$(last_line "$LOGS/$name.log")} ;;
  esac
  record "$RES/$name" "$status" "$(since "$t0")" "$reason"
  say "$name: $status${reason:+: $reason} ($(since "$t0") s)"
  if [[ $status == failed || $status == timeout ]]; then tail -n 15 "$LOGS/$name.log" | sed 's/^/    /'; fi
  report
}

# run_one PREFIX CMD...: one run of a step (a bench configuration, a CLI call), stdout to
# PREFIX.out, stderr to PREFIX.log, its own status; returns 1 when it failed. A caller's RUN_CAP
# (seconds) bounds each run, so that one slow run leaves time to the others.
run_one() {
  local prefix=$1 t0 rc status reason="" limit=$((STEP_END - SECONDS))
  shift
  if [[ -n ${RUN_CAP:-} ]] && ((limit > RUN_CAP)); then limit=$RUN_CAP; fi
  t0=$EPOCHREALTIME
  set +e
  if ((limit > 0)); then
    timeout -k 10 "$limit" "$@" >"$prefix.out" 2>"$prefix.log"
    rc=$?
  else
    rc=124 limit=0
    : >"$prefix.out"
    : >"$prefix.log"
  fi
  set -e
  case $rc in
    0) status=ok ;;
    124 | 137) status=timeout reason="stopped at its ${limit} s limit" ;;
    *) status=failed reason=$(last_line "$prefix.log") ;;
  esac
  record "$prefix" "$status" "$(since "$t0")" "${reason:-exit status $rc}"
  [[ $status == ok ]] && : >"$prefix.reason"
  local label
  label="$(basename "$(dirname "$prefix")") $(basename "$prefix")"
  echo "gpu_check:   $label: $status ($(since "$t0") s)${reason:+: $reason}" | tee -a "$prefix.log" >&3
  cat "$prefix.out" "$prefix.log"
  [[ $status == ok ]]
}

step_install() {
  if ((USE_CURRENT)); then
    echo "--current-python: $BASE_PY as it is, the project from $ROOT on PYTHONPATH" >"$RES/install.why"
    return "$SKIPPED"
  fi
  local why=$RES/install.why
  echo "could not create a venv with $BASE_PY -m venv" >"$why"
  # No pip or setuptools of its own (an old bundled setuptools would shadow the interpreter's):
  # the interpreter's pip installs into it, and it sees the interpreter's packages after its own,
  # so a GPU image's torch is used, not downloaded.
  tmo "$BASE_PY" -m venv --without-pip "$VENV"
  local purelib
  purelib=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
  "$BASE_PY" -c 'import site; print("\n".join(site.getsitepackages()))' >"$purelib/_base_site.pth"
  local pip=("$BASE_PY" -m pip --python "$VENV/bin/python" install -q)
  if [[ -n $WHEELS ]]; then
    local wheels=("$WHEELS"/*.whl)
    [[ -e ${wheels[0]} ]] || { echo "--wheels $WHEELS holds no .whl file" >"$why"; return 1; }
    echo "pip could not install the wheels in $WHEELS (see gpu_check.log)" >"$why"
    tmo "${pip[@]}" --no-index --no-deps --no-build-isolation "${wheels[@]}"
    echo "pip install --no-index --no-deps -e $ROOT failed (see gpu_check.log)" >"$why"
    tmo "${pip[@]}" --no-index --no-deps --no-build-isolation -e "$ROOT"
  else
    echo "pip install -e \"$ROOT[test]\" failed (see gpu_check.log)" >"$why"
    tmo "${pip[@]}" -e "$ROOT[test]"
  fi
  # What the steps import, from outside the tree (so the installed project is the one found).
  local imports=(torch numpy pyvips ray pyarrow pytest jobs.cli pipeline.engine.tiled) name
  for name in "${imports[@]}"; do
    (cd / && "$VENV/bin/python" -c "import $name") || {
      echo "the venv cannot import $name (see gpu_check.log)" >"$why"
      return 1
    }
  done
}

step_inputs() {
  local sizes
  mapfile -t sizes < <(printf '%s\n' "${SIZES[@]}" "$BATCH_SIZE" | sort -u)
  tmo "$PY" "$ROOT/scripts/gpu_check_probe.py" inputs "$WORK/in" "${sizes[@]}"
  ls -l "$WORK/in"
}

step_cuda_tests() {
  local files rc=0
  mapfile -t files < <(grep -rl --include='test_*.py' 'pytest.mark.cuda' tests | sort)
  ((${#files[@]})) || { echo "no test file uses pytest.mark.cuda" >"$RES/cuda_tests.why"; return 1; }
  tmo "$PY" -m pytest -q -p no:cacheprovider -m cuda --continue-on-collection-errors \
    --junitxml="$RES/cuda_tests.xml" "${files[@]}" || rc=$?
  if ((rc == 5)); then
    echo "pytest -m cuda selected no test" >"$RES/cuda_tests.why"
  elif ((rc != 0 && rc != 124)); then
    grep -E '^(FAILED|ERROR) ' "$LOGS/cuda_tests.log" | head -n 1 | cut -c1-300 >"$RES/cuda_tests.why" || true
  fi
  return "$rc"
}

step_bench() {
  local size precision failed=0 RUN_CAP=$((75 * BUDGET / 450))
  for size in "${SIZES[@]}"; do
    for precision in "${PRECISIONS[@]}"; do
      run_one "$RES/bench/${size}_$precision" "$PY" -m jobs.cli bench --device "$DEVICE" --json \
        --content "$WORK/in/photo_$size.jpg" --tile "$TILE" --precision "$precision" --warmup "$WARMUP" \
        "${BENCH_FLAGS[@]}" || failed=1
    done
  done
  ((!failed)) || { echo "some configurations failed (see runs)" >"$RES/bench.why"; return 1; }
}

# file_runs STEP EXTRA_FLAG SIZE...: ultrastyle stylize from file to file, one run per size.
file_runs() {
  local step=$1 extra=$2 size failed=0
  shift 2
  local help
  help=$(ultrastyle stylize --help)
  # An option's own line (two spaces in), not a mention in another option's help text.
  has_flag() { grep -qE -- "^  (-[a-zA-Z], )?$1([ =,]|\$)" <<<"$help"; }
  local flags=(--tile "$TILE")
  if has_flag --device; then
    flags+=(--device auto)
  elif [[ $DEVICE == cuda ]]; then
    echo "ultrastyle stylize has no --device flag: the single-image CLI runs on the CPU only" >"$RES/$step.why"
    return "$NOT_AVAILABLE"
  fi
  if [[ -n $extra ]]; then
    if ! has_flag "${extra%% *}"; then
      echo "ultrastyle stylize has no ${extra%% *} flag" >"$RES/$step.why"
      return "$NOT_AVAILABLE"
    fi
    read -ra more <<<"$extra"
    flags+=("${more[@]}")
  fi
  for size in "$@"; do
    local prefix=$RES/$step/$size out=$WORK/out_${step}_$size.jpg
    printf '%s\n' "${flags[*]}" >"$prefix.args"
    if run_one "$prefix" "$PY" -m jobs.cli stylize "$WORK/in/photo_$size.jpg" --style "$WORK/in/style.png" \
      --output "$out" "${flags[@]}"; then
      stat -c %s "$out" >"$prefix.bytes"
      rm -f "$out"
    else
      failed=1
    fi
  done
  ((!failed)) || { echo "some runs failed (see runs)" >"$RES/$step.why"; return 1; }
}

step_cli() { file_runs cli "" "${SIZES[@]}"; }
step_stroke_scale() { file_runs stroke_scale "--stroke-scale auto" "$STROKE_SIZE"; }

step_batch() {
  local folder=$WORK/batch_in out=$WORK/batch_out i rc=0 sampler=""
  mkdir -p "$folder"
  for ((i = 1; i <= COPIES; i++)); do cp "$WORK/in/photo_$BATCH_SIZE.jpg" "$folder/photo$i.jpg"; done
  local flags=(--tile "$TILE" --progress-seconds 5)
  [[ $DEVICE == cpu ]] && flags+=(--workers 1)
  if [[ $DEVICE != cuda ]]; then
    echo "no CUDA GPU: nothing to sample" >"$RES/batch/util.reason"
  elif ! command -v nvidia-smi >/dev/null; then
    echo "nvidia-smi is not on the PATH" >"$RES/batch/util.reason"
  else
    nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader,nounits -lms 200 \
      >"$RES/batch/util.csv" 2>"$RES/batch/util.reason" &
    sampler=$!
    trap "kill $sampler 2>/dev/null || true" EXIT  # this step's subshell only
  fi
  printf '%s\n' "${flags[*]}" >"$RES/batch/job.args"
  run_one "$RES/batch/job" "$PY" -m jobs.cli stylize --input "$folder" --style "$WORK/in/style.png" \
    --output "$out" "${flags[@]}" || rc=1
  if [[ -n $sampler ]]; then kill "$sampler" 2>/dev/null || true; wait "$sampler" 2>/dev/null || true; fi
  tmo "$PY" "$ROOT/scripts/gpu_check_probe.py" manifest "$out" >"$RES/batch/manifest.json" || rc=1
  cat "$RES/batch/manifest.json"
  ((!rc)) || cp "$RES/batch/job.reason" "$RES/batch.why"
  return "$rc"
}

# --- the run -------------------------------------------------------------------------------
exec 3>&1  # the console, for the per-run lines of steps whose output goes to their log
say "output to $OUTDIR, work folder $WORK, budget $BUDGET s"
run_step install
if [[ $(cat "$RES/install.status") == ok ]]; then
  PY=$VENV/bin/python
  INTERPRETER="venv: $VENV (pip install${WHEELS:+ --no-index from $WHEELS})"
elif [[ -x $VENV/bin/python ]]; then
  # The install stopped part way: keep what it put in the venv (the wheels), the tree on PYTHONPATH.
  PY=$VENV/bin/python
  export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
  INTERPRETER="venv: $VENV (install incomplete), project on PYTHONPATH"
else
  export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
  INTERPRETER="current: $BASE_PY, project on PYTHONPATH"
fi
"$PY" "$ROOT/scripts/gpu_check_probe.py" probe >"$RES/env.json" 2>>"$LOGS/install.log" || true
cuda_seen='import json, sys; sys.exit(not json.load(open(sys.argv[1])).get("cuda_available"))'
if ((!FORCE_CPU)) && "$BASE_PY" -c "$cuda_seen" "$RES/env.json" 2>/dev/null; then
  DEVICE=cuda SIZES=(3840x2160 10240x4096) TILE=1024 WARMUP=1 BATCH_SIZE=3840x2160 COPIES=8 BENCH_FLAGS=()
else
  # One torch thread: a cascade this small stalls in 2-thread regions on a shared machine.
  DEVICE=cpu SIZES=(256x256 512x256) TILE=256 WARMUP=0 BATCH_SIZE=512x256 COPIES=2 BENCH_FLAGS=(--threads 1)
fi
PRECISIONS=(fp32 tf32 bf16 fp16)
STROKE_SIZE=${SIZES[-1]}
"$BASE_PY" - "$DEVICE" "$BUDGET" "$STARTED_AT" "$INTERPRETER" "$TILE" "$WARMUP" "$STROKE_SIZE" "$BATCH_SIZE" \
  "$COPIES" "${SIZES[*]}" "${PRECISIONS[*]}" >"$WORK/plan.json" <<'EOF'
import json, sys
device, budget, started, interpreter, tile, warmup, stroke, batch, copies, sizes, precisions = sys.argv[1:]
print(json.dumps({
    "target": device, "budget_seconds": int(budget), "started_at": started, "interpreter": interpreter,
    "sizes": sizes.split(), "precisions": precisions.split(), "tile": int(tile), "warmup": int(warmup),
    "cli_sizes": sizes.split(), "stroke_size": stroke, "batch": {"size": batch, "copies": int(copies)},
}))
EOF
say "target $DEVICE: sizes ${SIZES[*]}, tile $TILE; interpreter $INTERPRETER"
for name in "${STEPS[@]:1}"; do run_step "$name"; done
