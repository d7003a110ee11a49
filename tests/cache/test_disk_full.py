"""A full disk, a file-size limit, a read-only or non-folder path: one line, nothing lost.

The disk-full case is real: a small tmpfs is mounted where the process may mount one
(root here), filled until the refresh's staging runs out of space half-way. Everywhere,
a real process-wide file-size limit (``RLIMIT_FSIZE``) makes the commit's first
generation chunk fail with EFBIG. Each time: one line naming the cause and the fix, the
committed generation untouched, the finished batches kept, and the rerun (space freed,
limit lifted) equals a clean run.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from featurecache.cache import Cache
from featurecache.errors import EXIT_ERROR
from tests.conftest import assert_same_numbers, invoke, make_image, workspace

BATCH = 8


def command(folder: Path, cache: Path) -> list[str]:
    return [
        sys.executable, "-m", "featurecache", "-q", "extract", "--data", str(folder),
        "--weights", "none", "--input-size", "32", "--batch-size", str(BATCH),
        "--cache", str(cache), "--no-progress", "--json",
    ]  # fmt: skip


def photos(root: Path, n: int, start: int = 0) -> Path:
    for i in range(start, start + n):
        make_image(root / f"c{i % 2}" / f"{i:03d}.png", (40 + i, 90, 200 - i), pattern=i % 2)
    return root


def snapshot(root: Path) -> dict[str, str]:
    """Every committed generation file's BLAKE2b: proof that nothing touched them."""
    return {
        str(p.relative_to(root)): hashlib.blake2b(p.read_bytes()).hexdigest()
        for p in sorted(root.glob("photos/*/gen-*/**/*"))
        if p.is_file()
    }


def staged(cache: Path) -> int:
    [meta] = workspace(cache).glob("staging/*/*/*/zarr.json")
    return json.loads(meta.read_text())["attributes"]["progress"]["records_done"]


def run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=300, **kwargs)


def _limit_file_size(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs mounted at tmp_path/disk, or a skip where mounting is not allowed."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()})")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def check_resumed_equals_clean(folder: Path, cache: Path, tmp_path: Path, done_before: int):
    again = run(command(folder, cache))
    assert again.returncode == 0, again.stderr
    [resumed] = json.loads(again.stdout)["extract"]
    assert resumed["n_resumed"] == done_before
    clean = run(command(folder, tmp_path / "clean"))
    [reference] = json.loads(clean.stdout)["extract"]
    a = Cache(cache).read("photos", resumed["group"])
    b = Cache(tmp_path / "clean").read("photos", reference["group"])
    assert list(a.keys) == list(b.keys) and len(a.keys) == reference["n_images"]
    np.testing.assert_array_equal(a.y, b.y)
    assert_same_numbers(a.X, b.X)


def test_disk_full_mid_refresh_keeps_the_generation_and_the_finished_batches(small_disk, tmp_path):
    folder = photos(tmp_path / "photos", 16)
    cache = small_disk / "cache"
    assert run(command(folder, cache)).returncode == 0
    before = snapshot(cache)
    photos(folder, 96, start=16)  # 12 more batches to compute
    stat = os.statvfs(small_disk)
    room = 5 * BATCH * 1280 * 4  # about five staging batches of float32 features
    with open(small_disk / "filler", "wb") as fh:
        fh.write(b"\0" * max(0, stat.f_bavail * stat.f_frsize - room))

    full = run(command(folder, cache))
    assert full.returncode == EXIT_ERROR, full.stderr
    [line] = full.stderr.strip().splitlines()[-1:]
    assert line.startswith("error: cannot write the staging area of the cache")
    assert "no space left on the device" in line and "Traceback" not in full.stderr
    assert snapshot(cache) == before and os.readlink(next(cache.glob("photos/*/current")))
    done = staged(cache)
    assert 0 < done < 96, done  # it stopped half-way, with what it finished kept

    (small_disk / "filler").unlink()  # space freed
    check_resumed_equals_clean(folder, cache, tmp_path, done)


def test_a_file_size_limit_at_commit_keeps_everything_and_the_rerun_completes(tmp_path):
    folder = photos(tmp_path / "photos", 16)
    cache = tmp_path / "cache"
    assert run(command(folder, cache)).returncode == 0
    before = snapshot(cache)
    photos(folder, 80, start=16)

    limited = run(command(folder, cache), preexec_fn=_limit_file_size(48_000))
    assert limited.returncode == EXIT_ERROR, limited.stderr
    line = limited.stderr.strip().splitlines()[-1]
    assert line.startswith("error: cannot write a new generation into the cache")
    assert "file too large" in line and "ulimit -f" in line
    assert snapshot(cache) == before
    assert not list(cache.glob("photos/*/gen-*.partial"))  # the half-written one removed
    assert staged(cache) == 80  # every batch was staged before the commit failed

    check_resumed_equals_clean(folder, cache, tmp_path, 80)


@pytest.mark.parametrize("case", ["under a regular file", "read-only file system"])
def test_a_cache_or_output_that_cannot_be_written_is_one_line(tmp_path, case):
    folder = photos(tmp_path / "photos", 6)
    if case == "under a regular file":
        (tmp_path / "file").write_text("x")
        target, words = tmp_path / "file" / "sub", "regular file, not a folder"
    else:
        target = tmp_path / "ro"
        target.mkdir()
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(target)],
            capture_output=True,
        )
        if mounted.returncode != 0:
            pytest.skip("cannot mount a read-only tmpfs here")
        words = "read-only file system"
    try:
        args = ["--data", folder, "--weights", "none", "--input-size", 32]
        extract = invoke("extract", *args, "--cache", target / "cache")
        assert extract.exit_code == EXIT_ERROR and words in extract.output
        assert len(extract.output.strip().splitlines()) == 1, extract.output
        assert invoke("extract", *args, "--cache", tmp_path / "cache").exit_code == 0
        heads = invoke("train-head", *args, "--cache", tmp_path / "cache", "--output", target)
        assert heads.exit_code == EXIT_ERROR and words in heads.output, heads.output
        assert heads.output.strip().startswith("error: cannot write results into")
    finally:
        if case == "read-only file system":
            subprocess.run(["umount", "-l", str(target)], check=False)
    shutil.rmtree(tmp_path / "cache")
