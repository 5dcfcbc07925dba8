"""``--sync-bn`` (snn.StepwiseSyncBatchNorm2d) under bfloat16 autocast, two gloo processes: no
operation that makes the host wait for the device, and float32 statistics."""
import os
import subprocess
import sys

import torch

import syncbn_amp_launch
from helpers import REPO
from snn import StepwiseBatchNorm2d

SYNCING_OPS = {'aten._local_scalar_dense.default',     # a value read on the host (.item())
               'aten.nonzero.default',                 # shapes that depend on values:
               'aten.masked_select.default',           # the host waits for the device
               'aten.index.Tensor'}                    # (boolean-mask indexing, as torch's)


def test_sync_bn_is_sync_free_with_float32_statistics_of_bfloat16_input(tmp_path):
    """Two gloo processes, each half of a bfloat16 batch, against StepwiseBatchNorm2d on the
    float32 values of all of it: the path every device now takes has no operation that waits
    for the device, and its statistics are float32 (computed in bfloat16 the running mean
    was off by 9e-4 relative here)."""
    env = {k: v for k, v in os.environ.items() if k not in ('WORLD_SIZE', 'RANK', 'LOCAL_RANK')}
    done = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node',
                           '2', str(REPO / 'tests' / 'syncbn_amp_launch.py'), str(tmp_path / 'out.pt')],
                          cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    got = torch.load(tmp_path / 'out.pt', weights_only=True)
    assert 'aten.var.correction' in got['ops'] and not SYNCING_OPS & set(got['ops'])
    x, r = syncbn_amp_launch.inputs()
    ref = StepwiseBatchNorm2d(x.shape[2], step_mode='m')
    xs = x.float().requires_grad_(True)
    y = ref(xs)
    (y * r).sum().backward()
    torch.testing.assert_close(got['running_mean'], ref.running_mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got['running_var'], ref.running_var, rtol=1e-5, atol=1e-6)
    assert got['dtypes'] == ['torch.bfloat16'] * 2                          # as nn.BatchNorm2d's
    for key, want in (('y', y.detach()), ('x_grad', xs.grad)):               # bfloat16 rounding
        torch.testing.assert_close(got[key], want, rtol=2 ** -7, atol=2 ** -7, msg=key)
