"""Quiet by default: a real `featurecache run` in a new process (real MobileNetV2
weights, TensorFlow imported for extraction and the dense head) writes to stderr only
featurecache's own log lines; `--verbose` lets TensorFlow's through again."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from featurecache.quiet import IMPORT_NOTICE
from tests.conftest import REPO

pytestmark = pytest.mark.real_weights

#: A line of the --log-file: time, process, logger, level, message.
LOG_LINE = re.compile(r"^\S+ \S+ \d+ (?P<name>\S+) (?P<level>[A-Z]+): (?P<message>.*)$")
TENSORFLOW_WORDS = re.compile(r"tensorflow|absl|oneDNN|cuda|\.cc:\d+\]|XLA", re.IGNORECASE)


def run(folder: Path, tmp_path: Path, *options: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_", "ABSL"))}
    args = [
        sys.executable,
        "-m",
        "featurecache",
        *options,
        "--log-file",
        str(tmp_path / "log.txt"),
        "run",
        "--data",
        str(folder),
        "--backbone",
        "mobilenet_v2",
        "--head",
        "dense",
        "--cache",
        str(tmp_path / "cache"),
        "--output",
        str(tmp_path / "runs"),
        "--no-progress",
    ]
    return subprocess.run(args, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)


def test_a_normal_run_prints_only_featurecache_lines(class_folder, tmp_path):
    (class_folder / "red" / "broken.jpg").write_bytes(b"\xff\xd8 not a JPEG")  # one warning
    done = run(class_folder, tmp_path)
    assert done.returncode == 3, done.stderr  # completed, one image skipped
    logged = {
        f"{m['level']}: {m['message']}"
        for line in (tmp_path / "log.txt").read_text().splitlines()
        if (m := LOG_LINE.match(line)) and m["name"].startswith(("featurecache", "py.warnings"))
    }
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines, "the skipped image should be reported on stderr"
    assert [line for line in lines if line not in logged] == []  # featurecache's lines only
    assert not [line for line in lines if TENSORFLOW_WORDS.search(line)]
    assert any("broken.jpg" in line for line in lines)


def test_verbose_lets_tensorflow_log_again(class_folder, tmp_path):
    done = run(class_folder, tmp_path, "--verbose")
    assert done.returncode == 0, done.stderr
    native = [line for line in done.stderr.splitlines() if IMPORT_NOTICE.match(line)]
    assert native, done.stderr  # TensorFlow's own import-time lines, as it writes them


#: What XLA writes on a CPU machine where the torch extra brought CUDA libraries.
CUINIT = (
    "E0000 00:00:1733300000.123456   12345 cuda_platform.cc:52] failed call to cuInit: "
    "INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)"
)
REAL_ERROR = "E0000 00:00:1733300000.223456   12345 op_kernel.cc:1857] OP_REQUIRES failed"


@pytest.fixture
def quiet_window(monkeypatch):
    """:func:`quiet_import` as before TensorFlow's import, however far this process got."""
    from featurecache import quiet

    monkeypatch.setattr(quiet, "_verbose", False)
    monkeypatch.setattr(quiet, "_NATIVE_MODULES", ("featurecache_tests_never_imported",))
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")  # the user's: quiet sets nothing
    return quiet


def test_quiet_import_drops_the_failed_cuinit_line_and_keeps_real_errors(
    quiet_window, capfd, monkeypatch
):
    with quiet_window.quiet_import():
        os.write(2, f"{CUINIT}\n{REAL_ERROR}\nTraceback (most recent call last):\n".encode())
    err = capfd.readouterr().err
    assert "cuInit" not in err
    assert err.splitlines() == [REAL_ERROR, "Traceback (most recent call last):"]

    monkeypatch.setattr(quiet_window, "_verbose", True)  # --verbose: as TensorFlow writes it
    with quiet_window.quiet_import():
        os.write(2, f"{CUINIT}\n".encode())
    assert capfd.readouterr().err == f"{CUINIT}\n"


def test_the_cuinit_line_of_the_first_device_listing_is_held_too(quiet_window, capfd, monkeypatch):
    """TensorFlow calls cuInit when it first lists its devices, after its import: that is
    done inside the window, so the line is dropped there too."""
    from types import SimpleNamespace

    listed = []

    def list_physical_devices():
        listed.append(True)
        os.write(2, f"{CUINIT}\n".encode())
        return []

    fake = SimpleNamespace(config=SimpleNamespace(list_physical_devices=list_physical_devices))
    with quiet_window.quiet_import():
        monkeypatch.setitem(sys.modules, "tensorflow", fake)  # "imported" in the block
    assert listed and capfd.readouterr().err == ""
