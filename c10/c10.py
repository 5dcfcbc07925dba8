"""The pruning methods (Grad R, Deep R, soft Deep R, STDS: ``engine.methods``) on CIFAR-10 with
the released 6-conv, 2-FC spiking network.

Examples (from the repository root, or from inside c10/ as ``python c10.py ...``)::

    python c10/c10.py -m grad -s 0.95            # Grad R, target sparsity 0.95
    python c10/c10.py -m deep -s 0.95            # Deep R
    python c10/c10.py -m deep -soft -s 0.95      # soft Deep R
    python c10/c10.py -m stds --flat-width 2     # STDS
    python c10/c10.py -m grad -s 0.95 -test      # evaluate the latest checkpoint

Data (``--dataset-dir``), in this order of preference:

- ``cifar-10-batches-py/`` or ``cifar-10-python.tar.gz`` (torchvision's CIFAR10), also
  when the folder holds none of the three layouts: then the archive is downloaded;
- an image-folder copy, taken only when neither of the above is there and ``train/`` is:
  ``train/<class>/*`` and ``test/<class>/*`` with exactly CIFAR-10's ten class folders
  (airplane, automobile, bird, cat, deer, dog, frog, horse, ship, truck; labels 0..9 in
  that order) holding 32x32 RGB images, e.g. PNG or JPEG files. Samples are taken from
  the classes in turn, so ``--train-size``/``--test-size`` see all ten. A JPEG copy
  changes the pixels slightly, so its accuracies are not those of the original data.

BatchNorm parameters are never pruned: the engine gives them a plain Adam with the same
learning rate. Everything but the model, the data and the defaults lives in the ``engine`` package.
"""
import sys
from collections import Counter
from pathlib import Path

if __package__ in (None, ''):      # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image  # noqa: E402
from torchvision import datasets, transforms  # noqa: E402
from torchvision.datasets import cifar  # noqa: E402

import engine  # noqa: E402
from engine.augment import random_crop_flip  # noqa: E402
from engine.datafiles import Expected, find_damaged  # noqa: E402
from c10.model import CIFAR10SNN  # noqa: E402

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck')
"""CIFAR-10's class names in label order (0..9); also the class folders of an image-folder copy."""
IMAGE_SIZE, IMAGE_MODE = (32, 32), 'RGB'
SPLITS = ('train', 'test')
LAYOUT = 'train/<class>/* and test/<class>/* for the ten CIFAR-10 classes'
BATCHES = datasets.CIFAR10.base_folder
"""The folder of the extracted archive, ``cifar-10-batches-py``."""
ARCHIVE = Expected(datasets.CIFAR10.filename, 170498071, datasets.CIFAR10.tgz_md5)
"""``cifar-10-python.tar.gz`` as published (MD5 sum: torchvision's)."""
BATCH_SIZE = {'data_batch_1': 31035704, 'data_batch_2': 31035320, 'data_batch_3': 31035999,
              'data_batch_4': 31035696, 'data_batch_5': 31035623, 'test_batch': 31035526,
              'batches.meta': 158}
"""Bytes of the files in the archive (published listings of ``cifar-10-batches-py``)."""
BATCH_FILES = tuple(Expected(name, BATCH_SIZE[name], md5) for name, md5 in
                    [*datasets.CIFAR10.train_list, *datasets.CIFAR10.test_list,
                     (datasets.CIFAR10.meta['filename'], datasets.CIFAR10.meta['md5'])])
"""The seven files torchvision's CIFAR10 reads, with the MD5 sums it checks them against."""


def data_source(root: Path) -> str:
    """Which copy of CIFAR-10 ``load_datasets`` reads from folder ``root``.

    Returns ``'image-folder'`` when ``root`` has neither ``cifar-10-batches-py/`` nor
    ``cifar-10-python.tar.gz`` but has ``train/``; else ``'cifar-10-batches-py'``
    (torchvision's CIFAR10, which may extract or download the archive).
    """
    if (root / 'cifar-10-batches-py').exists() or (root / 'cifar-10-python.tar.gz').exists():
        return 'cifar-10-batches-py'
    return 'image-folder' if (root / 'train').is_dir() else 'cifar-10-batches-py'


def _transforms():
    """(train, test) transforms; both give float32 tensors [3, 32, 32] normalised by MEAN, STD."""
    normalise = [transforms.ToTensor(), transforms.Normalize(MEAN, STD)]
    train_tf = transforms.Compose([transforms.RandomCrop(32, padding=4),
                                   transforms.RandomHorizontalFlip(), *normalise])
    return train_tf, transforms.Compose(normalise)


def _is_listed(path: str) -> bool:
    """ImageFolder's file filter: every file but hidden ones (``.DS_Store``, ...).

    Extensions are not looked at, so a stray non-image file is reported by
    :func:`_check_images` instead of being skipped without a word.
    """
    return not Path(path).name.startswith('.')


def _check_class_folders(split_dir: Path) -> None:
    """One split of an image-folder copy has exactly CIFAR-10's ten class folders.

    Raises:
        engine.UsageError: the split folder is missing, or a class folder is missing or
            not in CIFAR-10 (one line).
    """
    if not split_dir.is_dir():
        raise engine.UsageError(f'image folder {split_dir.parent}: no {split_dir.name}/ folder; '
                                f'the image-folder layout is {LAYOUT}')
    found = {entry.name for entry in split_dir.iterdir() if entry.is_dir()}
    if not found:
        raise engine.UsageError(f'image folder {split_dir}: no class folders; '
                                f'the image-folder layout is {LAYOUT}')
    missing = [c for c in CLASSES if c not in found]
    if missing:
        raise engine.UsageError(f'image folder {split_dir}: class folder(s) missing: '
                                f'{", ".join(missing)} (CIFAR-10 needs {", ".join(CLASSES)})')
    extra = sorted(found - set(CLASSES))
    if extra:
        raise engine.UsageError(f'image folder {split_dir}: folder(s) that are not CIFAR-10 classes: '
                                f'{", ".join(extra)} (only {", ".join(CLASSES)} may be there)')


def _check_images(dataset: datasets.ImageFolder) -> None:
    """Every class has files and every file is a 32x32 RGB image, judged from its header.

    ``Image.open`` reads only the header, so 60,000 files take a few seconds; a file whose
    pixel data are damaged after a good header is not caught here but when it is loaded.

    Raises:
        engine.UsageError: an empty class folder, a file PIL cannot open, or an image of
            another size or mode (one line naming the file).
    """
    root = Path(dataset.root)
    counts = Counter(dataset.targets)
    for label, name in enumerate(CLASSES):
        if counts[label] == 0:
            raise engine.UsageError(f'image folder {root / name}: no images in this class folder')
    for path, _ in dataset.samples:
        try:
            with Image.open(path) as img:
                size, mode = img.size, img.mode
        except Exception as err:      # PIL raises several kinds; all mean "not an image"
            raise engine.UsageError(f'image folder: {path} is not an image PIL can open '
                                    f'({type(err).__name__})') from None
        if size != IMAGE_SIZE or mode != IMAGE_MODE:
            raise engine.UsageError(f'image folder: {path} is a {size[0]}x{size[1]} {mode} image; '
                                    f'CIFAR-10 images are 32x32 RGB')


def _interleave(dataset: datasets.ImageFolder) -> None:
    """Reorder the samples class by class in turn: the first file of every class, then the second...

    ImageFolder lists all airplanes, then all automobiles, ...; the engine's ``--train-size
    K`` / ``--test-size K`` take the first K samples, which would then be one or two classes.
    Interleaved, any first K are balanced (as CIFAR-10's own mixed order roughly is).
    Labels do not change.
    """
    rank, keyed = Counter(), []
    for path, label in dataset.samples:          # sorted by class, then by file name
        keyed.append((rank[label], label, path))
        rank[label] += 1
    dataset.samples = dataset.imgs = [(path, label) for _, label, path in sorted(keyed)]
    dataset.targets = [label for _, label in dataset.samples]


def load_image_folder(root: Path):
    """CIFAR-10 train and test sets from an image-folder copy in ``root``.

    Layout: ``root/train/<class>/*`` and ``root/test/<class>/*`` with the class folders
    named exactly as :data:`CLASSES`; labels follow that order (airplane 0 ... truck 9).
    Every file but hidden ones is checked to be a 32x32 RGB image before any is loaded.
    Items are (float32 tensor [3, 32, 32] normalised by MEAN, STD, int label); the train
    set is randomly cropped (padding 4) and flipped, as the CIFAR10 path is. Samples are
    ordered class by class in turn (each class's files by name), so any first K samples
    cover the classes evenly.

    Returns:
        (train_set, test_set), two ``torchvision.datasets.ImageFolder``.

    Raises:
        engine.UsageError: one line naming what is wrong and where: a missing or empty
            split folder, a missing, extra or empty class folder, a file that is not an
            image, or an image that is not 32x32 RGB.
    """
    for split in SPLITS:                  # both layouts first: cheap, and the likelier mistake
        _check_class_folders(root / split)
    sets = []
    for split, tf in zip(SPLITS, _transforms()):
        ds = datasets.ImageFolder(str(root / split), transform=tf, is_valid_file=_is_listed,
                                  allow_empty=True)
        _check_images(ds)
        _interleave(ds)
        sets.append(ds)
    return tuple(sets)


def _md5_matches(path: Path, md5: str) -> bool:
    """torchvision's own MD5 check, the one its CIFAR10 applies to these files."""
    return cifar.check_integrity(str(path), md5)


def check_cifar_files(root: Path) -> bool:
    """Check the files of ``root`` that torchvision's CIFAR10 is about to read.

    The extracted batches in ``cifar-10-batches-py/`` that are there, and, when one of
    them is missing (torchvision then extracts the archive), ``cifar-10-python.tar.gz``
    if it is there: size, and MD5 sum once per version of a file (``engine.datafiles``).
    A damaged file is not replaced: the run stops, and the line says what to delete.

    Returns:
        True when all seven batch files are there (and good), so nothing need be extracted.

    Raises:
        engine.UsageError: a damaged file (one line naming it and the remedy).
    """
    folder, archive = root / BATCHES, root / ARCHIVE.name
    found = find_damaged(folder, BATCH_FILES, _md5_matches)
    if found is not None:
        again = (f'extracts it again from {archive}' if archive.exists()
                 else f'downloads {ARCHIVE.name} (170 MB) and extracts it')
        raise engine.UsageError(f'{found[0]} is damaged ({found[1]}); delete it and run again: '
                                f'the run then {again}')
    if all((folder / spec.name).exists() for spec in BATCH_FILES):
        return True
    found = find_damaged(root, [ARCHIVE], _md5_matches)
    if found is not None:
        raise engine.UsageError(f'{found[0]} is damaged ({found[1]}); delete it and run again: the run '
                                f'then downloads it again (170 MB), or put a good copy there')
    return False


def load_datasets(config):
    """CIFAR-10 train set (random crop 32, padding 4, horizontal flip) and test set, [3, 32, 32].

    Uses ``<dataset-dir>/cifar-10-batches-py``, extracting ``cifar-10-python.tar.gz`` or
    downloading it when missing; when neither is there but ``<dataset-dir>/train`` is, an
    image-folder copy (:func:`load_image_folder`); :func:`data_source` tells which, as
    ``run.json`` records it. The files are checked first (:func:`check_cifar_files`).

    Raises:
        engine.UsageError: a damaged data file, the data are absent and cannot be
            downloaded, or the image-folder copy is not CIFAR-10's layout (one line).
    """
    root = config.dataset_dir
    if data_source(root) == 'image-folder':
        return load_image_folder(root)
    complete = check_cifar_files(root)
    if not complete:
        engine.check_writable_dir('--dataset-dir', root)
    existed = root.exists()
    train_tf, test_tf = _transforms()
    try:        # download=True hashes the six batches once more: only when some are missing
        return (datasets.CIFAR10(str(root), train=True, transform=train_tf, download=not complete),
                datasets.CIFAR10(str(root), train=False, transform=test_tf))
    except Exception as err:     # no internet, or a damaged archive
        if not existed and root.is_dir() and not any(root.iterdir()):
            root.rmdir()         # leave no empty folder behind from the failed download
        raise engine.UsageError(
            f'CIFAR-10 is not in {root} and could not be downloaded ({type(err).__name__}); '
            f'put cifar-10-python.tar.gz, the extracted cifar-10-batches-py/, or an image-folder '
            f'copy ({LAYOUT}) into {root}') from None


EXPERIMENT = engine.Experiment(
    prog='c10.py',
    description='Prune the CIFAR-10 spiking CNN (6 conv + 2 FC layers, LIF, T time steps) with '
                'a pruning method (-m), or train it unpruned (-m no_prune). BatchNorm parameters '
                'are trained by a plain Adam, never pruned.',
    defaults={'b': 16, 'lr': 1e-4, 'N': 2048, 'i1': 128, 'i2': 1024, 'eval_batch': 128},
    build_model=lambda config: CIFAR10SNN(T=config.T),
    load_datasets=load_datasets,
    augment=random_crop_flip(padding=4),
    mean=MEAN, std=STD,
    data_source=data_source,
)


if __name__ == '__main__':
    sys.exit(engine.main(EXPERIMENT))
