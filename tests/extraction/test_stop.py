"""SIGTERM and SIGINT stop a real extraction at a safe point, with one line and a code.

The first signal lets the batch in hand become durable in staging, then the process
says "stopped by SIGTERM after N of M images; run again to resume" and exits with 143
(130 for SIGINT); the rerun resumes and equals an uninterrupted run. A second signal
stops at once.
"""

import os
import signal
import subprocess
import time

import numpy as np
import pytest

from featurecache.cache import Cache
from featurecache.errors import EXIT_SIGINT, EXIT_SIGTERM
from tests.conftest import assert_same_numbers
from tests.extraction.test_crash import N_IMAGES, command, progress, run_to_end
from tests.extraction.test_crash import folder as folder  # noqa: F401  (the fixture)


def _as_on_a_terminal() -> None:
    """SIGINT as a terminal's process has it: a test runner started in the background
    (nohup, CI) passes SIGINT on ignored, and featurecache leaves an ignored SIGINT alone."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def signal_when(folder, cache, sig, reached, *, twice: bool = False):
    """Start an extraction, send ``sig`` once ``reached(cache)``; its (code, stderr)."""
    proc = subprocess.Popen(
        [a for a in command(folder, cache) if a != "-q"],  # without -q: its own lines
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_as_on_a_terminal,
    )
    deadline = time.monotonic() + 240
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if reached(cache):
                os.kill(proc.pid, sig)
                if twice:
                    time.sleep(0.05)
                    os.kill(proc.pid, sig)
                break
            time.sleep(0.005)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, err


@pytest.mark.parametrize(
    ("sig", "code"), [(signal.SIGTERM, EXIT_SIGTERM), (signal.SIGINT, EXIT_SIGINT)]
)
def test_a_signal_stops_after_the_batch_in_hand_and_the_rerun_resumes(folder, tmp_path, sig, code):  # noqa: F811
    cache = tmp_path / "stopped"
    returncode, err = signal_when(folder, cache, sig, lambda c: (progress(c) or 0) >= 16)
    assert returncode == code, err
    name = signal.Signals(sig).name
    [line] = [x for x in err.splitlines() if x.startswith("stopped by")]
    assert line.startswith(f"stopped by {name} after ") and line.endswith(
        f"of {N_IMAGES} images; run again to resume"
    )
    assert "Traceback" not in err
    done = progress(cache)
    assert done is not None and done >= 16  # finished batches kept in staging
    assert int(line.split("after ")[1].split(" of")[0]) == done
    assert not list(cache.glob("*/*/gen-*"))  # nothing committed

    resumed = run_to_end(folder, cache)
    assert resumed["n_resumed"] == done and resumed["n_images"] == N_IMAGES
    clean = run_to_end(folder, tmp_path / "clean")
    a = Cache(cache).read("photos", resumed["group"])
    b = Cache(tmp_path / "clean").read("photos", clean["group"])
    assert list(a.keys) == list(b.keys)
    np.testing.assert_array_equal(a.y, b.y)
    assert_same_numbers(a.X, b.X)


def test_a_second_signal_stops_at_once(folder, tmp_path):  # noqa: F811
    cache = tmp_path / "twice"
    returncode, err = signal_when(
        folder, cache, signal.SIGTERM, lambda c: (progress(c) or 0) >= 8, twice=True
    )
    assert returncode == -signal.SIGTERM, err  # killed by the signal, as without a handler
    assert (progress(cache) or 0) >= 8


def test_the_stopped_run_says_so_in_json_mode_too(folder, tmp_path):  # noqa: F811
    """`--json` output stays parseable: nothing on stdout, the line on stderr."""
    cache = tmp_path / "json"
    proc = subprocess.Popen(
        command(folder, cache), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline and (progress(cache) or 0) < 8:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_SIGTERM, err
    assert out == ""
    # its last line (TensorFlow's own C++ log lines may come before: issue #16)
    assert err.strip().splitlines()[-1].startswith("stopped by SIGTERM") and "Traceback" not in err
