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
