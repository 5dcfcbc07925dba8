"""Data files checked before use: their size, and their MD5 sum once per version of a file.

A dataset script lists its files as :class:`Expected` (name, size, MD5 sum as published)
and calls :func:`find_damaged` before torchvision reads them, so that a file cut short or
changed ends with one line naming it instead of a traceback from deep inside torchvision.

Hashing costs about 0.2 s for MNIST's 55 MB and several times that for CIFAR-10, at every
start. So a folder's stamp file (:data:`STAMP`) records the size and modification time of
each file whose MD5 sum matched; at the next start a file with the same size and time is
not read again. A file changed in place gets a new modification time and is hashed again;
damage that keeps both (a disk error, a copy made with its old time) is not seen.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

STAMP = '.md5-verified.json'
"""Name of a folder's stamp file: ``{name: [size, mtime_ns, md5]}`` of its files found good."""
SET_ASIDE_SUFFIX = '.damaged'
"""What :func:`set_aside` appends to a damaged file's name."""


@dataclass(frozen=True)
class Expected:
    """A data file as published: its name in its folder, its size in bytes, its MD5 sum."""
    name: str
    size: int
    md5: str


def md5sum(path: Path) -> str:
    """The MD5 sum (hex) of the file at ``path``, read 1 MiB at a time.

    Raises:
        OSError: the file cannot be read.
    """
    digest = hashlib.md5()
    with open(path, 'rb') as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _read_stamp(folder: Path) -> dict:
    """The records of ``folder``'s stamp file; empty when it is missing or unreadable."""
    try:
        records = json.loads((folder / STAMP).read_text())
    except (OSError, ValueError):
        return {}
    return records if isinstance(records, dict) else {}


def _write_stamp(folder: Path, records: dict) -> None:
    """Replace ``folder``'s stamp file by ``records`` in one step; a folder that cannot be
    written keeps no stamp (its files are then hashed at every start)."""
    tmp = folder / f'{STAMP}.{os.getpid()}.tmp'
    try:
        with open(tmp, 'w') as f:
            json.dump(records, f, indent=1, sort_keys=True)
        os.replace(tmp, folder / STAMP)
    except OSError:
        tmp.unlink(missing_ok=True)


def find_damaged(folder: Path, expected: Iterable[Expected],
                 matches: Callable[[Path, str], bool] | None = None) -> tuple[Path, str] | None:
    """The first file of ``expected`` that is in ``folder`` but is not the published file.

    A file is good when its MD5 sum is the published one (``matches(path, md5)`` when
    given, e.g. torchvision's ``check_integrity``); the sum is computed only when the
    file's size or modification time differs from those the folder's stamp recorded
    when it was last found good. A missing file is not damaged (the caller fetches it or
    lets torchvision do so). When every file there is good, the stamp is rewritten with
    them; when one is damaged, nothing is written.

    Returns:
        None when every file there is good; else ``(path, why)``, ``why`` being e.g.
        ``'999984 bytes, expected 47040016'`` or ``'wrong MD5 sum'``.

    Raises:
        OSError: a file cannot be read.
    """
    matches = matches or (lambda path, md5: md5sum(path) == md5)
    old = _read_stamp(folder)
    records = {}
    for spec in expected:
        path = folder / spec.name
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):     # not there (or its folder is a file)
            continue
        record = [st.st_size, st.st_mtime_ns, spec.md5]
        if old.get(spec.name) != record and not matches(path, spec.md5):
            why = 'wrong MD5 sum' if st.st_size == spec.size else f'{st.st_size} bytes, expected {spec.size}'
            return path, why
        records[spec.name] = record
    if records != old:
        _write_stamp(folder, records)
    return None


def set_aside(path: Path) -> Path:
    """Rename the damaged file ``path`` to ``<name>.damaged`` (replacing an older one).

    Returns the new path.

    Raises:
        OSError: it cannot be renamed (e.g. a read-only folder).
    """
    aside = path.with_name(path.name + SET_ASIDE_SUFFIX)
    os.replace(path, aside)
    return aside
