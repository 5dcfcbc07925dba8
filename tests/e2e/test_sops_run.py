"""SOPs recorded by a tiny real MNIST run and printed by -test."""

from helpers import REPO, read_metrics, run_script


def test_run_records_sops_and_test_prints_them(tmp_path):
    flags = ['-m', 'no_prune', '--dump-dir', tmp_path, '--train-size', '512', '--test-size', '256',
             '-N', '2', '-i1', '2', '--workers', '0', '--no-compile', '--device', 'cpu']
    done = run_script(REPO / 'mnist' / 'mnist.py', *flags)
    assert done.returncode == 0, done.stderr
    records = read_metrics(tmp_path / 'logs' / 'lr-1e-3-b-128-T-8-no_prune-train-512-test-256')
    assert ['sops' in r for r in records] == [True, False, True]     # every -i1 epochs
    sops = records[-1]['sops']
    assert sops['images'] == 256 and set(sops['per_layer']) == {'fc.1.weight'}
    assert sops['total'] == sops['dense_total'] > 0                # nothing pruned
    assert sops['first_layer_macs'] == 784 * 800
    done = run_script(REPO / 'mnist' / 'mnist.py', *flags, '-test')
    assert done.returncode == 0, done.stderr
    assert f"SOPs/image total: {sops['total']:.1f} (unpruned {sops['dense_total']:.1f}, ratio 1.0000)" \
        in done.stdout
    assert f"SOPs/image fc.1.weight: {sops['per_layer']['fc.1.weight']:.1f}" in done.stdout
