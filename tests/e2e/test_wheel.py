"""The optimizers as an installable wheel (pyproject.toml): exactly the pruning modules (Grad R,
Deep R, their shared Adam part, STDS).

The wheel is built offline (``--no-build-isolation``: the installed setuptools) from a copy
of the repository, so that setuptools' ``build/`` and ``*.egg-info`` stay out of the
checkout; it is then installed into a temporary ``--target`` folder and used from there
by a Python whose path holds that folder but not the repository.
"""
import json
import shutil
import subprocess
import sys
import textwrap
import zipfile

import pytest

from helpers import REPO

MODULES = {'gradrewire.py', 'deeprewire.py', 'rewiring_base.py', 'stds.py'}
NOT_COPIED = {'.git', 'data', '__pycache__', '.pytest_cache', 'build', 'dist', 'logs', 'models', 'runs'}

# One Grad R step with the prior off (alpha = 0): u = sign * theta - lr * g / (|g| + eps).
STEP = textwrap.dedent('''
    import json, sys
    import torch
    from gradrewire import GradRewiring
    w = torch.nn.Parameter(torch.tensor([0.5, -0.2, 0.05], dtype=torch.float64))
    a = torch.nn.Parameter(w.detach().clone())
    opt, adam = GradRewiring([w], lr=0.1, alpha=0.0), torch.optim.Adam([a], lr=0.1)
    for p, o in ((w, opt), (a, adam)):
        p.grad = torch.ones(3, dtype=torch.float64)
        o.step()
    print(json.dumps({'w': w.tolist(), 'theta': opt.state[w]['strength'].tolist(), 'adam': a.tolist(),
                      'file': sys.modules['gradrewire'].__file__, 'path': sys.path}))
    for name in ('engine', 'mnist', 'snn'):
        try:
            __import__(name)
        except ModuleNotFoundError:
            continue
        raise SystemExit(f'{name} is importable: the repository is on the path')
''')


def _run(*cmd, cwd, env=None):
    done = subprocess.run([sys.executable, *cmd], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


@pytest.fixture(scope='module')
def wheel(tmp_path_factory):
    """The wheel built from a copy of the repository (its working tree, less what is not source)."""
    try:
        import setuptools  # noqa: F401
    except ImportError:
        pytest.fail('setuptools is not installed: building the wheel offline needs it (pip install setuptools)')
    tmp = tmp_path_factory.mktemp('wheel')
    src = tmp / 'src'
    shutil.copytree(REPO, src, ignore=lambda folder, names: [
        n for n in names if n in NOT_COPIED or n.endswith('.egg-info')])
    _run('-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '--disable-pip-version-check',
         '-w', str(tmp / 'out'), '.', cwd=src)
    (built,) = (tmp / 'out').glob('*.whl')
    return built


def test_pytest_ini_stays_the_configuration(request):
    assert (REPO / 'pyproject.toml').is_file()
    assert request.config.inipath == REPO / 'pytest.ini'
    assert request.config.getini('testpaths') == ['tests']


def test_the_wheel_holds_exactly_the_pruning_modules(wheel):
    assert wheel.name == 'gradrewire-0.1.0-py3-none-any.whl'
    with zipfile.ZipFile(wheel) as whl:
        names = whl.namelist()
        top = {n for n in names if not n.startswith('gradrewire-0.1.0.dist-info/')}
        assert top == MODULES
        for module in MODULES:
            assert whl.read(module) == (REPO / module).read_bytes()
        assert whl.read('gradrewire-0.1.0.dist-info/top_level.txt').decode().split() == [
            'deeprewire', 'gradrewire', 'rewiring_base', 'stds']
        metadata = whl.read('gradrewire-0.1.0.dist-info/METADATA').decode().splitlines()
    assert {'Name: gradrewire', 'Version: 0.1.0', 'Requires-Python: >=3.10',
            'Requires-Dist: torch>=2.0'} <= set(metadata)
    assert [line for line in metadata if line.startswith('Requires-Dist:')] == ['Requires-Dist: torch>=2.0']


def test_installed_wheel_steps_without_the_repository(wheel, tmp_path):
    target = tmp_path / 'site'
    _run('-m', 'pip', 'install', '--no-deps', '--no-index', '--disable-pip-version-check',
         '--target', str(target), str(wheel), cwd=tmp_path)
    assert sorted(p.name for p in target.iterdir() if p.suffix == '.py') == sorted(MODULES)
    env = {'PYTHONPATH': str(target), 'OMP_NUM_THREADS': '1', 'PATH': '/usr/bin:/bin'}
    done = _run('-c', STEP, cwd=tmp_path, env=env)
    out = json.loads(done.stdout)
    assert out['file'] == str(target / 'gradrewire.py')
    assert not any(str(REPO) in entry for entry in out['path'])
    # The first Adam step is lr * g / (|g| + eps): 0.1 down for each synapse. The third one's
    # strength goes below 0, so it is pruned (weight 0) where Adam's weight goes to -0.05.
    assert out['w'][:2] == out['adam'][:2] == pytest.approx([0.4, -0.3], abs=1e-8)
    assert out['w'][2] == 0.0 and out['adam'][2] == pytest.approx(-0.05, abs=1e-8)
    assert out['theta'] == pytest.approx([0.4, 0.3, -0.05], abs=1e-8)
