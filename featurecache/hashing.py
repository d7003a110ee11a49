"""File hashing: the SHA-256 identities of weights files and preset folders.

Neutral ground for every layer that needs to know whether weights changed: the
backbones record these hashes when they load weights, and the cache's recipe checks
them again before it reuses features (without importing Keras).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path


def sha256_file(path: str | Path) -> str:
    """SHA-256 (hex) of one file, read in chunks by ``hashlib.file_digest``: the identity
    of the weights that made a set of features.

    Raises
    ------
    OSError
        If the file cannot be read.
    """
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def sha256_files(folder: str | Path, names: Iterable[str]) -> str:
    """SHA-256 (hex) over the files ``names`` of ``folder``: the name and
    :func:`sha256_file` of each, sorted by name (so the order of ``names`` does not
    matter, and renaming a file changes the hash).

    Raises
    ------
    OSError
        If one of the files cannot be read.
    """
    folder = Path(folder)
    digest = hashlib.sha256()
    for name in sorted(names):
        digest.update(f"{name}\0{sha256_file(folder / name)}\n".encode())
    return digest.hexdigest()
