#!/usr/bin/env bash
# Stage what benchmarks/gpu_check.sh needs on a bare, offline GPU machine, into .gpu/ (ignored
# by git; name it in the device run's `carry`). Run here, from the repository root, with
# network access to PyPI:
#   bash benchmarks/gpu_prepare.sh
# .gpu/wheels/     pure-python wheels of what the scripts and tests import beyond torch and
#                  torchvision (SpikingJelly, tqdm, TensorBoard's SummaryWriter, pytest)
# .gpu/mnist/      the four MNIST IDX files, gzipped
# .gpu/cifar10-jpeg.tar.gz   the JPEG copy of CIFAR-10 from shared data, whole
# .gpu/MD5SUMS     MD5 sums of the wheels, the archive and the unpacked MNIST files (MNIST/raw/...)
set -euo pipefail
cd "$(dirname "$0")/.."
stage=.gpu
mnist_raw=${MNIST_RAW:-data/MNIST/raw}
c10_jpeg=${C10_JPEG_TGZ:-/work/shared/data/cifar10-jpeg.tar.gz}
c10_md5=1eba9de85a6ede77ec8d8127045c7c38      # /work/shared/data/README.md
die() { echo "gpu_prepare.sh: $*" >&2; exit 1; }

# Versions: the project's pins from requirements.txt; their dependencies below are the
# versions these scripts were tried with. SpikingJelly also declares scipy and matplotlib, and
# TensorBoard grpcio, markdown, werkzeug and more: none is imported by spikingjelly.activation_based
# or by torch.utils.tensorboard.SummaryWriter, so they are left out (pip install --no-deps).
pin() { grep -E "^$1==" requirements.txt || die "requirements.txt pins no version of $1"; }
wheels=(
  "$(pin spikingjelly)" "$(pin tqdm)" "$(pin tensorboard)" "$(pin pytest)"
  protobuf==7.36.2 absl-py==2.5.1                                   # SummaryWriter's imports
  iniconfig==2.3.0 pluggy==1.6.0 pygments==2.20.0 packaging==26.2   # pytest's
)

[ -f "$c10_jpeg" ] || die "no CIFAR-10 JPEG archive at $c10_jpeg (set C10_JPEG_TGZ)"
for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
  [ -f "$mnist_raw/$f" ] || die "no $mnist_raw/$f (run python mnist/mnist.py once, or set MNIST_RAW)"
done
rm -rf "$stage"
mkdir -p "$stage/wheels" "$stage/mnist"

# Wheels for CPython 3.12 on x86_64 Linux, whatever python runs here.
echo "downloading ${#wheels[@]} wheels"
pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any \
  -d "$stage/wheels" "${wheels[@]}" || die "pip download failed (is PyPI reachable?)"

# MNIST: checked against mnist/mnist.py's MD5 sums, then gzipped (the check unpacks them).
python3 - "$mnist_raw" <<'PY' || die "MNIST files in $mnist_raw do not match mnist/mnist.py's MD5 sums"
import ast, hashlib, sys
from pathlib import Path
tree = ast.parse(Path('mnist/mnist.py').read_text())
raw_md5 = next(ast.literal_eval(n.value) for n in tree.body
               if isinstance(n, ast.Assign) and getattr(n.targets[0], 'id', '') == 'RAW_MD5')
bad = [name for name, md5 in raw_md5.items()
       if hashlib.md5((Path(sys.argv[1]) / name).read_bytes()).hexdigest() != md5]
sys.exit(f'wrong MD5: {", ".join(bad)}' if bad else 0)
PY
for f in "$mnist_raw"/*-ubyte; do
  gzip -9 -n -c "$f" >"$stage/mnist/$(basename "$f").gz"
done

# CIFAR-10 JPEG copy: the whole archive (train 50,000 + test 10,000 images, 19.6 MB), since
# the check trains full epochs on it.
[ "$(md5sum <"$c10_jpeg" | cut -d' ' -f1)" = "$c10_md5" ] || die "$c10_jpeg: wrong MD5 sum"
cp "$c10_jpeg" "$stage/cifar10-jpeg.tar.gz"

# Sums the check verifies after the transfer (MNIST: those of the unpacked files).
(cd "$stage" && md5sum wheels/*.whl cifar10-jpeg.tar.gz >MD5SUMS)
(cd "$mnist_raw" && md5sum *-ubyte) | sed 's|  |  MNIST/raw/|' >>"$stage/MD5SUMS"

# The device run carries the working tree (tracked and untracked-not-ignored files) plus .gpu/.
staged=$(du -sb "$stage" | cut -f1)
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 stat -c %s 2>/dev/null | awk '{s+=$1} END {print s+0}')
mib() { awk -v b="$1" 'BEGIN {printf "%.1f MiB", b / 1048576}'; }
echo "staged in $stage/: $(ls "$stage/wheels" | wc -l) wheels, 4 MNIST files, CIFAR-10 JPEG archive"
du -sh "$stage"/* | sed 's/^/  /'
echo "total $(mib "$staged") staged + $(mib "$tree") working tree = $(mib $((staged + tree))) of the 64 MiB a device run carries"
[ $((staged + tree)) -lt $((56 * 1048576)) ] || die "over 56 MiB: too close to the 64 MiB limit"
