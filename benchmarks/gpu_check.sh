#!/usr/bin/env bash
# The checks that need a CUDA GPU (CI has none), made to run on a bare, offline GPU machine that
# has python3 with torch and torchvision and nothing else of the project's: the rest comes from
# .gpu/, which `bash benchmarks/gpu_prepare.sh` fills where PyPI is reachable (a device run must
# carry .gpu). From the repository root:
#   bash benchmarks/gpu_check.sh                 # on the GPU: about 9 minutes (--budget)
#   bash benchmarks/gpu_check.sh --device cpu    # rehearsal on a CPU: the same parts, tiny sizes,
#                                                # one thread, a few minutes
# Options: --budget SECONDS (whole check; default 540 on CUDA, 1800 on the CPU), --parts LIST
# (e.g. a,b,g; default all; setup always runs, so --parts none runs it alone). Env: PYTHON (default python3), OUT (also write $OUT/gpu_check.log),
# GPU_CHECK_DIR (scratch folder, default /tmp/gpu_check; emptied first).
#
# Each part runs under its own `timeout` (capped by what is left of the budget), prints what it
# found and ends with one line `== <part>: PASS|FAIL (exit N)|TIMEOUT|SKIPPED ... in S s`; a
# summary table ends the output, and the exit status is 1 if any part did not pass.
#   setup  install .gpu/wheels into $GPU_CHECK_DIR/site (pip --no-index --no-deps; PYTHONPATH),
#          check the MD5 sums, unpack MNIST and the CIFAR-10 JPEG copy; print the machine
#   a      a one-op torch.compile on the device: does Triton (CUDA) or the C++ compiler work?
#   b      the optimizer tests (their CUDA cases run only with CUDA)
#   c      benchmarks/sync_check.py: MNIST Grad R training steps under CUDA's sync debug mode
#   d      MNIST Grad R resume on the device: 2 epochs straight against 1 + resume 1, bit-exact
#   e      benchmarks/epoch.py: MNIST default configuration; CIFAR-10 fp32 and --amp, a timed
#          slice of steps plus the full test pass, extrapolated to an epoch
#   f      one short CIFAR-10 run (-N 1) under plain python and under torchrun (1 process)
#   g      CIFAR-10 Grad R (-s 0.95) on the JPEG copy: as many whole epochs as the time left
#          allows (stopped with SIGINT; the last finished epoch is kept)
set -uo pipefail
SELF=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
cd "$(dirname "$SELF")/.."

DEVICE=cuda BUDGET= PARTS=a,b,c,d,e,f,g
while [ $# -gt 0 ]; do
  case $1 in
    --device) DEVICE=${2:?--device needs cpu or cuda}; shift 2 ;;
    --budget) BUDGET=${2:?--budget needs seconds}; shift 2 ;;
    --parts) PARTS=${2:?--parts needs a list such as a,b,g}; shift 2 ;;
    -h|--help) sed -n '2,/^set -uo/p' "$SELF" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
case $DEVICE in cuda|cpu) ;; *) echo "gpu_check.sh: --device must be cuda or cpu, got $DEVICE" >&2; exit 2 ;; esac
[[ $BUDGET =~ ^[0-9]*$ ]] || { echo "gpu_check.sh: --budget must be whole seconds, got $BUDGET" >&2; exit 2; }

export PY=${PYTHON:-python3} DEVICE
export WORK=${GPU_CHECK_DIR:-/tmp/gpu_check}
export PYTHONUNBUFFERED=1 PYTHONPATH=$WORK/site PIP_ROOT_USER_ACTION=ignore

# Sizes and time limits (seconds) per device. The limits are upper bounds, each cut to what is
# left of the budget; g gets the rest. The CPU rehearsal runs every part on tiny data with one
# thread and eager kernels (part a still compiles), so it takes minutes on one core.
if [ "$DEVICE" = cuda ]; then
  BUDGET=${BUDGET:-540}
  declare -A LIMIT=([setup]=120 [a]=90 [b]=120 [c]=120 [d]=150 [e]=270 [f]=200 [g]=100000)
  export MNIST_FLAGS='' C10_FLAGS=''
  SYNC_ARGS=(--steps 20)
  export RESUME_SIZE='--train-size 12800 --test-size 2000'
  EPOCH_ARGS=(--only 'device, --compile (default)' 'c10 device' --c10-steps 300 --c10-warmup-steps 30
              --timeout 150)
  export F_SIZE='--train-size 2400 --test-size 1000'     # 150 steps an epoch
  export G_SIZE='' G_MIN=150 G_EPOCHS=99                 # an epoch: ~1.5 min + ~40 s start
else
  BUDGET=${BUDGET:-1800}
  declare -A LIMIT=([setup]=300 [a]=240 [b]=300 [c]=180 [d]=300 [e]=400 [f]=400 [g]=400)
  export OMP_NUM_THREADS=1 TORCHINDUCTOR_COMPILE_THREADS=1
  export MNIST_FLAGS='-T 2 --no-compile --threads 1' C10_FLAGS='-T 1 -b 4 --eval-batch 8 --no-compile --threads 1'
  SYNC_ARGS=(--steps 4 --test-size 200)
  export RESUME_SIZE='--train-size 512 --test-size 200'
  EPOCH_ARGS=(--only 'device, eager' 'c10 device, fp32' --c10-steps 4 --c10-warmup-steps 1 --timeout 150
              --extra '-T 1 -b 4 --eval-batch 8 --no-compile --threads 1 --train-size 64 --test-size 16')
  export F_SIZE='--train-size 16 --test-size 8'
  export G_SIZE='--train-size 16 --test-size 8' G_MIN=30 G_EPOCHS=1
fi
OPTIMIZER_TESTS=(tests/unit/test_gradrewire.py tests/unit/test_deeprewire.py tests/unit/test_compiled_optimizers.py)
START=$SECONDS
DEADLINE=$((SECONDS + BUDGET))
SUMMARY=()
FAILED=0

want() { [[ ",$PARTS," == *",$1,"* ]]; }
left() { echo $((DEADLINE - SECONDS - 10)); }     # 10 s kept for the summary

# part NAME LIMIT COMMAND...: run COMMAND under timeout (LIMIT, or less when the budget is
# nearly spent), then one verdict line; the summary keeps it.
part() {
  local name=$1 limit=$2 rc verdict t0=$SECONDS; shift 2
  [ "$(left)" -lt "$limit" ] && limit=$(left)
  echo
  if [ "$limit" -lt 20 ]; then
    verdict="SKIPPED (budget spent)"
  else
    echo "== $name (timeout ${limit} s) =="
    timeout -k 15 "$limit" "$@"
    rc=$?
    case $rc in
      0) verdict=PASS ;;
      124|137) verdict="TIMEOUT (${limit} s)" ;;
      *) verdict="FAIL (exit $rc)" ;;
    esac
  fi
  [ "$verdict" = PASS ] || [[ $verdict == SKIPPED* ]] || FAILED=1
  LAST=$verdict
  echo "== $name: $verdict in $((SECONDS - t0)) s"
  SUMMARY+=("$(printf '%-22s %-24s %5d s' "$name" "$verdict" $((SECONDS - t0)))")
}

# ---- setup: wheels, MNIST, CIFAR-10 JPEG copy, and what the machine is
setup() {
  set -e
  [ -d .gpu/wheels ] || { echo "no .gpu/ here: run bash benchmarks/gpu_prepare.sh first (and carry .gpu)"; exit 1; }
  # Empty $WORK, but keep a CIFAR-10 copy unpacked from this very archive (60,000 files are slow
  # to delete and unpack again on a busy CPU machine; on a fresh GPU machine there is none).
  local unpacked=$WORK/c10/.unpacked-$(grep ' cifar10-jpeg.tar.gz' .gpu/MD5SUMS | cut -c1-32)
  mkdir -p "$WORK"
  find "$WORK" -mindepth 1 -maxdepth 1 ! -name c10 -exec rm -rf {} +
  [ -e "$unpacked" ] || rm -rf "$WORK/c10"
  mkdir -p "$WORK/data/MNIST/raw" "$WORK/c10"
  grep -v ' MNIST/' .gpu/MD5SUMS | (cd .gpu && md5sum -c --quiet -) || { echo "staged files damaged"; exit 1; }
  echo "not installed before: $(PYTHONPATH= "$PY" -c "import importlib.util as u
print(' '.join(m for m in ('spikingjelly', 'tqdm', 'tensorboard', 'absl', 'pytest')
               if u.find_spec(m) is None) or 'none of them')")"
  if PYTHONPATH= "$PY" -m pip --version >/dev/null 2>&1; then
    PYTHONPATH= "$PY" -m pip install --quiet --no-deps --no-index --disable-pip-version-check \
      --target "$WORK/site" .gpu/wheels/*.whl
  else                           # no pip: pure-python wheels are zip files of the installed tree
    echo "no pip: unpacking the wheels"
    for w in .gpu/wheels/*.whl; do "$PY" -m zipfile -e "$w" "$WORK/site"; done
  fi
  for f in .gpu/mnist/*.gz; do gunzip -c "$f" >"$WORK/data/MNIST/raw/$(basename "$f" .gz)"; done
  grep ' MNIST/' .gpu/MD5SUMS | (cd "$WORK/data" && md5sum -c --quiet -) || { echo "MNIST damaged"; exit 1; }
  [ -e "$unpacked" ] || { tar xzf .gpu/cifar10-jpeg.tar.gz -C "$WORK/c10" && touch "$unpacked"; }
  echo "MNIST in $WORK/data/MNIST/raw; CIFAR-10 JPEG copy in $WORK/c10:" \
    "$(find "$WORK/c10/train" -type f | wc -l) train, $(find "$WORK/c10/test" -type f | wc -l) test images"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$PY" - <<'PY'
import importlib.util, os, platform, shutil, sys
import torch, torchvision, spikingjelly, tensorboard
triton = importlib.util.find_spec('triton') is not None
cc = next((shutil.which(c) for c in ('g++', 'c++', 'clang++') if shutil.which(c)), None)
staged = all(m.__file__.startswith(os.environ['WORK']) for m in (spikingjelly, tensorboard))
print(f'python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), '
      f'torchvision {torchvision.__version__}, tensorboard {tensorboard.__version__} '
      f'({"staged" if staged else "NOT the staged one"}), Triton {"yes" if triton else "no"}, '
      f'C++ compiler {cc or "none"}, {os.cpu_count()} CPU cores')
if os.environ['DEVICE'] == 'cuda':
    if not torch.cuda.is_available():
        sys.exit('CUDA is not available here (use --device cpu for the rehearsal)')
    p = torch.cuda.get_device_properties(0)
    print(f'GPU: {p.name}, {p.total_memory / 2**30:.0f} GiB, capability {p.major}.{p.minor}, bf16 '
          f'{torch.cuda.is_bf16_supported()}')
PY
}

# ---- d: resume on the device, bit-exact
resume_check() {
  set -o pipefail
  local dump=$WORK/resume
  mnist() {
    "$PY" mnist/mnist.py -m grad -s 0.95 --device "$DEVICE" --dataset-dir "$WORK/data" $RESUME_SIZE \
      $MNIST_FLAGS "$@" 2>&1 | grep -E '^(epoch|resuming|run )|rror'
  }
  mnist -N 1 --dump-dir "$dump/straight" && mnist -N 0 --dump-dir "$dump/resumed" \
    && mnist -N 1 --dump-dir "$dump/resumed" || return 1
  "$PY" - "$dump" <<'PY'
import json, sys
from pathlib import Path
import torch
dump = Path(sys.argv[1])
name = next((dump / 'straight' / 'logs').iterdir()).name
rec = {k: [json.loads(l) for l in open(dump / k / 'logs' / name / 'metrics.jsonl')] for k in ('straight', 'resumed')}
strip = lambda r: {k: v for k, v in r.items() if not k.endswith('_seconds')}
same = [strip(a) == strip(b) for a, b in zip(rec['straight'], rec['resumed'])]
a, b = (torch.load(dump / k / 'models' / name / 'checkpoint.pt', weights_only=True)['model'] for k in ('straight', 'resumed'))
bits = all(torch.equal(a[k], b[k]) for k in a)
print(f'resume: {len(rec["straight"])} epochs straight, {len(rec["resumed"])} with a resume; metrics '
      f'(less seconds) equal per epoch: {same}; weights bit-identical: {bits}')
sys.exit(0 if len(same) == 2 and all(same) and bits else 1)
PY
}

# ---- f: the same short CIFAR-10 run under plain python and under torchrun (one process)
torchrun_check() {
  set -o pipefail
  local dump=$WORK/torchrun t0 t1 t2
  local flags=(-m grad -s 0.95 --device "$DEVICE" --dataset-dir "$WORK/c10" -N 1 $F_SIZE $C10_FLAGS)
  t0=$SECONDS
  echo "-- python c10/c10.py ${flags[*]}"
  "$PY" c10/c10.py "${flags[@]}" --dump-dir "$dump/python" 2>&1 | grep -E '^epoch|rror' || return 1
  t1=$SECONDS
  echo "-- torchrun --standalone --nproc_per_node 1 c10/c10.py (the same flags)"
  "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 c10/c10.py "${flags[@]}" \
    --dump-dir "$dump/torchrun" 2>&1 | grep -E '^epoch|rror' || return 1
  t2=$SECONDS
  "$PY" - "$dump" $((t1 - t0)) $((t2 - t1)) <<'PY'
import json, sys
from pathlib import Path
dump, walls = Path(sys.argv[1]), dict(python=int(sys.argv[2]), torchrun=int(sys.argv[3]))
for k in ('python', 'torchrun'):
    recs = [json.loads(l) for l in open(next((dump / k / 'logs').iterdir()) / 'metrics.jsonl')]
    train = ', '.join(f"{r['train_seconds']:.1f}" for r in recs)
    print(f'{k:9s} wall {walls[k]:4d} s (start, data and compile included); train s of epochs 0, 1: '
          f'{train}; test acc {recs[-1]["test_acc"]:.4f}')
PY
}

# ---- g: whole CIFAR-10 epochs on the JPEG copy until the time left runs out
c10_epochs() {
  local limit=$1 out=$WORK/c10_epochs.txt t0=$SECONDS
  echo "CIFAR-10 Grad R -s 0.95 on the JPEG copy (accuracies a little below those on the original" \
    "data), up to epoch $G_EPOCHS, stopped with SIGINT at $limit s if still running"
  timeout -s INT -k 30 "$limit" "$PY" c10/c10.py -m grad -s 0.95 --device "$DEVICE" \
    --dataset-dir "$WORK/c10" --dump-dir "$WORK/c10_run" -N "$G_EPOCHS" $G_SIZE $C10_FLAGS 2>&1 \
    | grep -E '^(epoch|run )|rror|interrupted' | tee "$out"
  local n
  n=$(grep -c '^epoch' "$out")
  echo "$n whole epoch(s) in $((SECONDS - t0)) s"
  [ "$n" -gt 0 ]
}
export -f resume_check torchrun_check c10_epochs

main() {
  echo "gpu_check.sh on $DEVICE: parts $PARTS, budget $BUDGET s, scratch $WORK, $(date -u '+%F %T UTC')"
  part setup "${LIMIT[setup]}" bash -c "$(declare -f setup); setup"
  [ "$LAST" = PASS ] || echo "setup did not pass: nothing else can run"

  if [ $FAILED = 0 ]; then
    want a && part "a. compile smoke" "${LIMIT[a]}" "$PY" - <<'PY'
import sys, time
import torch
device = torch.device(__import__('os').environ['DEVICE'])
t0 = time.perf_counter()
f = torch.compile(lambda x: torch.sin(x) * 2 + 1)
x = torch.randn(4096, generator=torch.Generator().manual_seed(0)).to(device)
diff = (f(x) - (torch.sin(x) * 2 + 1)).abs().max().item()   # float32 sin may differ in the last bits
ok = diff <= 1e-5
print(f'torch.compile of sin(x) * 2 + 1 on {device}: {"right" if ok else "WRONG"} result (largest '
      f'difference from eager {diff:.1e}) after {time.perf_counter() - t0:.1f} s, compile included')
sys.exit(0 if ok else 1)
PY
    want b && part "b. optimizer tests" "${LIMIT[b]}" \
      "$PY" -m pytest -q -p no:cacheprovider --noconftest "${OPTIMIZER_TESTS[@]}"
    # (--noconftest: no conftest is needed by these unit tests; tests/e2e/conftest.py fetches MNIST.)
    want c && part "c. sync debug" "${LIMIT[c]}" "$PY" benchmarks/sync_check.py "${SYNC_ARGS[@]}" \
      --device "$DEVICE" --dataset-dir "$WORK/data" $MNIST_FLAGS
    want d && part "d. resume bit-exact" "${LIMIT[d]}" bash -c resume_check
    want e && part "e. epoch timings" "${LIMIT[e]}" "$PY" benchmarks/epoch.py --device "$DEVICE" \
      --mnist-data "$WORK/data" "${EPOCH_ARGS[@]}"
    want f && part "f. torchrun vs python" "${LIMIT[f]}" bash -c torchrun_check
    if want g; then
      local g=$(( $(left) - 40 ))      # the rest, less the margin for SIGINT and the kill
      [ "$g" -gt "${LIMIT[g]}" ] && g=${LIMIT[g]}
      if [ "$g" -lt "$G_MIN" ]; then
        echo; echo "== g. c10 epochs: SKIPPED ($g s left, an epoch needs about $G_MIN s)"
        SUMMARY+=("$(printf '%-22s %-24s %5d s' "g. c10 epochs" "SKIPPED (no time)" 0)")
      else
        part "g. c10 epochs" $((g + 40)) bash -c "c10_epochs $g"
      fi
    fi
  fi
  echo
  echo "== summary ($DEVICE, $((SECONDS - START)) s of the $BUDGET s budget)"
  printf '%s\n' "${SUMMARY[@]}"
  return $FAILED
}

if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  main 2>&1 | tee "$OUT/gpu_check.log"
  exit "${PIPESTATUS[0]}"
fi
main 2>&1
