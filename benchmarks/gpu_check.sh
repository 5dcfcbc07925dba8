#!/usr/bin/env bash
# The checks that need a CUDA GPU (CI has none). Run from the repository root on a GPU machine:
#   bash benchmarks/gpu_check.sh [DUMP_DIR]
# 1. the CUDA tests of the optimizers; 2. MNIST Grad R on CUDA: two epochs straight against one
# epoch, stop, resume (must match exactly), and a Deep R epoch; 3. one CIFAR-10 training step,
# multi-step fast path against the step loop (time and peak GPU memory); 4. benchmarks/epoch.py
# (MNIST per configuration, CIFAR-10 fp32 and --amp); 5. with C10_JPEG=<unpacked JPEG copy>,
# the first CIFAR-10 epochs on real images for C10_EPOCHS epochs (default 3).
set -uo pipefail
dump=${1:-/tmp/gpu_check}
rm -rf "$dump"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, torchvision, spikingjelly; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
python3 -m pytest -q -p no:cacheprovider tests/test_deeprewire.py tests/test_gradrewire.py 2>&1 | tail -2
run() { python3 mnist/mnist.py "$@" --device cuda 2>&1 | grep -E '^(epoch|resuming|run)|rror'; }
run -m grad -s 0.95 -N 1 --dump-dir "$dump/straight"
run -m grad -s 0.95 -N 0 --dump-dir "$dump/resumed"
run -m grad -s 0.95 -N 1 --dump-dir "$dump/resumed"
python3 - "$dump" <<'PY'
import json, sys, torch
dump, name = sys.argv[1], 'lr-1e-3-b-128-T-8-penalty-1e-3-s-0.95-grad'
rec = {k: [json.loads(l) for l in open(f'{dump}/{k}/logs/{name}/metrics.jsonl')] for k in ('straight', 'resumed')}
strip = lambda r: {k: v for k, v in r.items() if not k.endswith('_seconds')}
same = [strip(a) == strip(b) for a, b in zip(rec['straight'], rec['resumed'])]
a, b = (torch.load(f'{dump}/{k}/models/{name}/checkpoint.pt', weights_only=True)['model'] for k in ('straight', 'resumed'))
print('resume on CUDA: metrics equal per epoch', same, '; weights bit-identical', all(torch.equal(a[k], b[k]) for k in a))
PY
run -m deep -s 0.95 -N 0 --dump-dir "$dump/deep"
python3 benchmarks/c10_step.py --device cuda --repeats 10 2>&1 | tail -7
python3 benchmarks/epoch.py --device cuda 2>&1
if [ -n "${C10_JPEG:-}" ]; then
  python3 c10/c10.py -m grad -s 0.95 --device cuda --dataset-dir "$C10_JPEG" --dump-dir "$dump/c10" \
    -N "$(( ${C10_EPOCHS:-3} - 1 ))" 2>&1 | grep -E '^(epoch|run)|rror'
fi
