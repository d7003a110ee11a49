"""Real processes killed with SIGKILL at several moments of an extraction.

After every kill the extraction is run again; the final cache must equal an
uninterrupted run's: same keys, same counts, bit-identical features, and each
rerun recomputes at most the batch that was in flight.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from featurecache.cache import Cache
from tests.conftest import make_image, workspace

N_IMAGES, BATCH, SIZE = 240, 8, 128


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("crash") / "photos"
    for c in range(3):
        for j in range(N_IMAGES // 3):
            make_image(root / f"c{c}" / f"{j:03d}.png", (60 * c, 100, 200 - 60 * c), pattern=c)
    return root


def command(folder: Path, cache: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "featurecache",
        "-q",
        "extract",
        "--data",
        str(folder),
        "--weights",
        "none",
        "--input-size",
        str(SIZE),
        "--batch-size",
        str(BATCH),
        "--cache",
        str(cache),
        "--no-progress",
        "--json",
    ]


def run_to_end(folder: Path, cache: Path) -> dict:
    done = subprocess.run(command(folder, cache), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["extract"][0]


def progress(cache: Path) -> int | None:
    for meta in workspace(cache).glob("staging/*/*/*/zarr.json"):
        try:
            return json.loads(meta.read_text())["attributes"]["progress"]["records_done"]
        except (OSError, ValueError, KeyError):
            return None
    return None


def kill_when(folder: Path, cache: Path, reached) -> int | None:
    """Start an extraction, SIGKILL it once ``reached(cache)`` is true; returns the
    records done when it was killed (None if it ended first)."""
    proc = subprocess.Popen(
        command(folder, cache), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 240
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if reached(cache):
                seen = progress(cache)
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                return seen
            time.sleep(0.005)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return None


def test_sigkill_at_several_moments_then_resume_equals_a_clean_run(folder, tmp_path):
    cache = tmp_path / "killed"
    moments = [
        ("staging created", lambda c: progress(c) is not None),
        ("after 5 batches", lambda c: (progress(c) or 0) >= 5 * BATCH),
        ("after 20 batches", lambda c: (progress(c) or 0) >= 20 * BATCH),
        ("while committing", lambda c: any(c.glob("*/*/gen-*.partial"))),
    ]
    killed_at = {}
    for name, reached in moments:
        seen = kill_when(folder, cache, reached)
        killed_at[name] = seen
        if seen is not None:
            # A rerun that is itself killed later must not lose finished batches:
            assert (progress(cache) or 0) >= seen or name == "while committing"
    print("killed at (records done):", killed_at)
    assert sum(v is not None for v in killed_at.values()) >= 3, killed_at
    last = run_to_end(folder, cache)
    assert last["n_images"] == N_IMAGES
    assert last["n_extracted"] + last["n_resumed"] <= N_IMAGES
    # The rerun recomputed at most one batch beyond what the last kill left done.
    assert last["n_extracted"] <= N_IMAGES - max(v for v in killed_at.values() if v) + BATCH

    clean = tmp_path / "clean"
    reference = run_to_end(folder, clean)
    a = Cache(cache).read("photos", last["group"])
    b = Cache(clean).read("photos", reference["group"])
    assert last["group"] == reference["group"]
    assert list(a.keys) == list(b.keys) and len(set(a.sources)) == N_IMAGES
    np.testing.assert_array_equal(a.y, b.y)
    np.testing.assert_array_equal(a.X, b.X)  # bit-identical
    assert not list(workspace(cache).glob("staging/*/*/*"))
    assert not list(cache.glob("*/*/gen-*.partial"))


def test_killed_before_any_batch_leaves_the_old_generation_readable(folder, tmp_path):
    cache = tmp_path / "c"
    first = run_to_end(folder, cache)
    new = make_image(folder / "c0" / "new.png", (1, 2, 3), pattern=1)
    try:
        seen = kill_when(folder, cache, lambda c: progress(c) is not None)
        assert seen == 0
        fs = Cache(cache).read("photos", first["group"])
        assert fs.X.shape[0] == N_IMAGES  # readers still see the committed generation
        again = run_to_end(folder, cache)
        assert again["n_images"] == N_IMAGES + 1 and again["n_extracted"] == 1
    finally:
        new.unlink()


def refresh_command(pipeline: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "featurecache",
        "-q",
        "refresh",
        str(pipeline),
        "--json",
        "--no-progress",
        *extra,
    ]


@pytest.mark.parametrize("mode", ["--wait", "--no-wait"])
def test_two_refreshes_at_once_never_corrupt_the_cache(folder, tmp_path, mode):
    pipeline = tmp_path / "p.toml"
    pipeline.write_text(
        f'name = "p"\ncache = "{tmp_path / "cache"}"\noutput = "{tmp_path / "runs"}"\n'
        f'batch_size = {BATCH}\n[[datasets]]\nname = "photos"\npath = "{folder}"\n'
        f'[[backbones]]\nname = "mobilenet_v2"\nweights = "none"\ninput_size = {SIZE}\n'
        '[[heads]]\nkind = "logistic_regression"\n'
    )
    procs = [
        subprocess.Popen(
            refresh_command(pipeline, mode),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    codes = sorted(p.returncode for p in procs)
    if mode == "--wait":
        assert codes == [0, 0], outs
        computed = sorted(json.loads(o)["refresh"][0]["n_extracted"] for o, _ in outs)
        assert computed == [0, N_IMAGES]  # the second waited, then found it all cached
    else:
        assert codes in ([0, 0], [0, 4]), outs
        for (_out, err), code in zip(outs, [p.returncode for p in procs], strict=True):
            if code == 4:
                assert "another featurecache process is writing data set 'photos'" in err
                assert "Traceback" not in err
    result = json.loads(
        next(o for (o, _), p in zip(outs, procs, strict=True) if p.returncode == 0)
    )["refresh"][0]
    fs = Cache(tmp_path / "cache").read("photos", result["extract"][0]["group"])
    assert fs.X.shape == (N_IMAGES, 1280) and len(set(fs.sources)) == N_IMAGES
    assert np.isfinite(fs.X).all()
