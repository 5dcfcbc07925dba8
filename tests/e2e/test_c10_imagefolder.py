"""c10.py on an image-folder copy of CIFAR-10 (``train/<class>/*``, ``test/<class>/*``).

The images are real: the first 30 train and 10 test JPEGs of each class, read selectively
from the team's JPEG copy (``helpers.CIFAR10_JPEG``: ``shared/data/cifar10-jpeg.tar.gz``
beside the repository, or ``$CIFAR10_JPEG``) into a pytest temporary folder. Without it the
tests are skipped (a user's clone), except under CI. Covered: labels in CIFAR-10's order, the tensors that reach the network (shape,
normalisation by hand, the train crop/flip), a short Grad R run through ``engine.main``,
and one line with exit status 2 for each malformed copy.
"""
import argparse
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import engine
from c10 import c10
from helpers import REPO, need_cifar10_jpeg, read_metrics, tensorboard_tags

PER_CLASS = {'train': 30, 'test': 10}
MEAN = np.array(c10.MEAN, dtype=np.float32)
STD = np.array(c10.STD, dtype=np.float32)
NAME = 'lr-1e-4-b-8-T-2-penalty-1e-3-s-0.95-grad-train-32-test-16'


def _wanted(member):
    """True for ``train/<class>/NNNN.jpg`` with NNNN < 30 and ``test/<class>/NNNN.jpg`` < 10."""
    parts = member.name.split('/')
    return (member.isfile() and len(parts) == 3 and parts[0] in PER_CLASS
            and int(Path(parts[2]).stem) < PER_CLASS[parts[0]])


@pytest.fixture(scope='module')
def copy(tmp_path_factory):
    """A 400-image image-folder copy of CIFAR-10 in a temporary folder (never the repository)."""
    root = tmp_path_factory.mktemp('cifar10-jpeg')
    with tarfile.open(need_cifar10_jpeg()) as tar:              # one pass; only the wanted members are written
        for member in tar:
            if _wanted(member):
                target = root / member.name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(tar.extractfile(member).read())
    return root


def load(root):
    args = argparse.Namespace(dataset_dir=root)
    train, test = c10.load_datasets(args)
    return args, train, test


def files(root):
    return sorted(p.relative_to(root) for p in root.rglob('*'))


def test_the_tarball_is_found_beside_the_repository():
    tarball = need_cifar10_jpeg()
    assert tarball.is_file()
    if not os.environ.get('CIFAR10_JPEG'):
        assert tarball == REPO.parent / 'shared' / 'data' / 'cifar10-jpeg.tar.gz'


def test_fixture_holds_the_chosen_real_images(copy):
    for split, n in PER_CLASS.items():
        assert sorted(p.name for p in (copy / split).iterdir()) == list(c10.CLASSES)
        for name in c10.CLASSES:
            assert sorted(p.name for p in (copy / split / name).iterdir()) == [f'{i:04d}.jpg' for i in range(n)]


def test_source_is_chosen_from_the_folder(copy, tmp_path):
    assert c10.data_source(copy) == 'image-folder'
    assert c10.data_source(tmp_path) == 'cifar-10-batches-py'           # nothing there: download
    (tmp_path / 'train').mkdir()
    assert c10.data_source(tmp_path) == 'image-folder'
    (tmp_path / 'cifar-10-python.tar.gz').touch()                         # the archive wins
    assert c10.data_source(tmp_path) == 'cifar-10-batches-py'
    (tmp_path / 'cifar-10-python.tar.gz').unlink()
    (tmp_path / 'cifar-10-batches-py').mkdir()
    assert c10.data_source(tmp_path) == 'cifar-10-batches-py'


def test_labels_follow_cifar10_order(copy):
    args, train, test = load(copy)
    assert c10.data_source(copy) == 'image-folder'
    assert (len(train), len(test)) == (300, 100)
    assert c10.CLASSES[3] == 'cat' and c10.CLASSES[9] == 'truck'
    for ds in (train, test):
        assert ds.class_to_idx == {name: i for i, name in enumerate(c10.CLASSES)}
        assert [Path(p).parent.name for p, _ in ds.samples] == [c10.CLASSES[t] for t in ds.targets]
        assert np.bincount(ds.targets).tolist() == [len(ds) // 10] * 10
        assert ds.targets[:20] == list(range(10)) * 2      # classes in turn: any first K is balanced
        assert [Path(p).name for p, _ in ds.samples[:20]] == ['0000.jpg'] * 10 + ['0001.jpg'] * 10
        assert ds.imgs == ds.samples
    cat = next(i for i, (p, _) in enumerate(test.samples) if Path(p).parts[-2:] == ('cat', '0007.jpg'))
    assert test[cat][1] == 3
    truck = next(i for i, (p, _) in enumerate(train.samples) if Path(p).parts[-2:] == ('truck', '0029.jpg'))
    assert train[truck][1] == 9


def test_test_tensor_is_normalised_pixels(copy):
    _, _, test = load(copy)
    index = next(i for i, (p, _) in enumerate(test.samples) if Path(p).parts[-2:] == ('dog', '0004.jpg'))
    x, label = test[index]
    assert (x.shape, x.dtype, label) == ((3, 32, 32), torch.float32, 5)
    with Image.open(copy / 'test' / 'dog' / '0004.jpg') as img:
        assert (img.size, img.mode) == ((32, 32), 'RGB')
        pixels = np.asarray(img, dtype=np.float32) / 255            # [32, 32, 3]
    expected = ((pixels - MEAN) / STD).transpose(2, 0, 1)
    assert np.abs(x.numpy() - expected).max() < 1e-5
    assert pixels.std() > 0.05                                       # a real picture, not flat


def _crops(pixels):
    """All 162 (dy, dx, flipped) crops of the 4-padded image, as RandomCrop and flip make them."""
    padded = np.pad(pixels, ((4, 4), (4, 4), (0, 0)))
    for dy in range(9):
        for dx in range(9):
            crop = padded[dy:dy + 32, dx:dx + 32]
            yield (dy, dx, False), crop
            yield (dy, dx, True), crop[:, ::-1]


def test_train_tensor_is_a_crop_or_flip_of_the_padded_image(copy):
    _, train, _ = load(copy)
    index = next(i for i, (p, _) in enumerate(train.samples) if Path(p).parts[-2:] == ('horse', '0011.jpg'))
    with Image.open(copy / 'train' / 'horse' / '0011.jpg') as img:
        pixels = np.asarray(img, dtype=np.float32) / 255
    seen = set()
    for seed in range(12):
        torch.manual_seed(seed)
        x, label = train[index]
        assert (x.shape, x.dtype, label) == ((3, 32, 32), torch.float32, 7)
        shown = x.numpy().transpose(1, 2, 0) * STD + MEAN            # undo Normalize
        matches = [key for key, crop in _crops(pixels) if np.abs(crop - shown).max() < 1e-5]
        assert matches, f'seed {seed}: not a crop/flip of the padded image'
        seen.update(matches)
    assert len(seen) > 3                                             # the crop moves between draws
    assert any(flipped for _, _, flipped in seen) and not all(flipped for _, _, flipped in seen)


def test_short_grad_run_on_the_image_folder(copy, tmp_path):
    before = files(copy)
    argv = ['-T', '2', '-b', '8', '-N', '0', '-i2', '2', '--train-size', '32', '--test-size', '16', '--workers', '0', '--no-compile',
            '--device', 'cpu', '-m', 'grad', '-s', '0.95', '--dataset-dir', str(copy),
            '--dump-dir', str(tmp_path)]
    assert engine.main(c10.EXPERIMENT, argv) == 0
    log_dir = tmp_path / 'logs' / NAME
    (record,) = read_metrics(log_dir)
    assert (record['epoch'], record['step']) == (0, 4)                # 32 samples / batch 8
    assert record['test_acc'] in {k / 16 for k in range(17)}          # 16 test images
    assert 0 <= record['sparsity'] < 1
    _, tags = tensorboard_tags(log_dir)
    assert {'test_acc', 'train/loss', 'sparsity/without bn', 'sparsity/with bn'} <= tags['scalars']
    ckpt = torch.load(tmp_path / 'models' / NAME / 'checkpoint.pt', weights_only=True)
    assert (ckpt['epoch'], ckpt['step'], ckpt['run']) == (0, 4, NAME)
    assert ckpt['best_acc'] == record['test_acc']
    assert ckpt['model']['fc.4.weight'].shape == (100, 2048)
    assert files(copy) == before                                      # the data folder is only read


# ----------------------------------------------------------------------------- malformed copies

def _bad_copy(copy, tmp_path):
    bad = tmp_path / 'cifar'
    shutil.copytree(copy, bad)
    return bad


def _save(path, size, mode):
    Image.new(mode, size, color=128 if mode == 'L' else (200, 30, 90)).save(path, 'JPEG')


def _drop_cat(bad):
    shutil.rmtree(bad / 'train' / 'cat')


def _add_zebra(bad):
    (bad / 'test' / 'zebra').mkdir()
    shutil.copy(bad / 'test' / 'horse' / '0000.jpg', bad / 'test' / 'zebra' / '0000.jpg')


def _empty_dog(bad):
    for f in (bad / 'train' / 'dog').iterdir():
        f.unlink()


def _small_bird(bad):
    _save(bad / 'train' / 'bird' / '0005.jpg', (16, 16), 'RGB')


def _grey_ship(bad):
    _save(bad / 'test' / 'ship' / '0003.jpg', (32, 32), 'L')


def _text_in_frog(bad):
    (bad / 'test' / 'frog' / 'notes.txt').write_text('not a picture\n')


def _fake_jpeg(bad):
    (bad / 'train' / 'deer' / '0002.jpg').write_bytes(b'\x00' * 64)


def _no_test(bad):
    shutil.rmtree(bad / 'test')


def _empty_train(bad):
    shutil.rmtree(bad / 'train')
    (bad / 'train').mkdir()


BAD = {
    'missing class': (_drop_cat, '/train: class folder(s) missing: cat (CIFAR-10 needs airplane, '),
    'extra class': (_add_zebra, '/test: folder(s) that are not CIFAR-10 classes: zebra (only airplane, '),
    'empty class': (_empty_dog, '/train/dog: no images in this class folder'),
    '16x16 image': (_small_bird, '/train/bird/0005.jpg is a 16x16 RGB image; CIFAR-10 images are 32x32 RGB'),
    'grayscale image': (_grey_ship, '/test/ship/0003.jpg is a 32x32 L image; CIFAR-10 images are 32x32 RGB'),
    'text file': (_text_in_frog, '/test/frog/notes.txt is not an image PIL can open (UnidentifiedImageError)'),
    'broken jpeg': (_fake_jpeg, '/train/deer/0002.jpg is not an image PIL can open (UnidentifiedImageError)'),
    'no test folder': (_no_test, ': no test/ folder; the image-folder layout is train/<class>/* and '),
    'empty train folder': (_empty_train, '/train: no class folders; the image-folder layout is '),
}


@pytest.mark.parametrize('case', list(BAD))
def test_bad_layout_is_one_line_and_writes_nothing(case, copy, tmp_path, capsys):
    spoil, expected = BAD[case]
    bad = _bad_copy(copy, tmp_path)
    spoil(bad)
    dump = tmp_path / 'dump'
    argv = ['-m', 'grad', '-s', '0.95', '-T', '2', '--workers', '0', '--no-compile', '--device', 'cpu',
            '--dataset-dir', str(bad), '--dump-dir', str(dump)]
    assert engine.main(c10.EXPERIMENT, argv) == 2
    captured = capsys.readouterr()
    (line,) = captured.err.strip().splitlines()
    assert line.startswith('c10.py: error: image folder'), line
    assert f'{bad}{expected}' in line, line                           # names the place in full
    assert captured.out == ''
    assert not dump.exists()


def test_hidden_files_are_ignored(copy, tmp_path):
    bad = _bad_copy(copy, tmp_path)
    (bad / 'train' / 'cat' / '.DS_Store').write_bytes(b'\x00\x01')
    _, train, _ = load(bad)
    assert len(train) == 300
