"""Quiet by default: TensorFlow's and absl's log lines, handled in one place.

TensorFlow 2.16+ writes a few lines to file descriptor 2 from C++ while it is being
imported (``WARNING: All log messages before absl::InitializeLog() is called are written
to STDERR``, the oneDNN notice, the CPU-instructions notice), before absl's logging is
initialised, so ``TF_CPP_MIN_LOG_LEVEL`` does not filter them (measured with TF 2.21:
they appear at every level, 0 to 3). ``TF_ENABLE_ONEDNN_OPTS=0`` removes them but also
turns oneDNN off, which halved MobileNetV2's CPU throughput here (97 -> 49 images/s), so
featurecache does not set it. Instead :func:`quiet_import` holds what is written to
file descriptor 2 while TensorFlow is imported and writes back every line except those
notices. After the import, ``TF_CPP_MIN_LOG_LEVEL=2`` (set unless the user set it)
keeps TensorFlow's C++ INFO and WARNING lines out, and the Python ``absl`` logger is
limited to errors.

One ERROR line is noise too: on a machine without a GPU where CUDA libraries are
installed (the NVIDIA wheels the ``torch`` extra brings), TensorFlow's XLA fails to
initialise CUDA and says ``failed call to cuInit`` (:data:`KNOWN_NOISE`). TensorFlow
initialises CUDA when it first lists its devices, not at import, so :func:`quiet_import`
lists them before it lets go of file descriptor 2, and drops that line with the notices.

:func:`configure` with ``verbose=True`` (``featurecache --verbose``) turns all of this
off: every line comes through, as TensorFlow writes it.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

#: Lines TensorFlow writes from C++ while it is imported (absl's ``I0000 00:00:...
#: file.cc:153] ...`` prefix, the pre-initialisation warning, the CPU-instructions hint).
IMPORT_NOTICE = re.compile(
    r"(WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|[IW]\d{4} \d\d:\d\d:[\d.]+\s+\d+ \w+\.cc:\d+\]"
    r"|To enable the following instructions:)"
)
#: ERROR lines TensorFlow writes that say nothing is wrong: XLA's failed ``cuInit`` on a
#: machine without a GPU (``E0000 00:00:1733300000.123456   12345 cuda_platform.cc:52]
#: failed call to cuInit: INTERNAL: CUDA error: ...``). Any other error line is kept.
KNOWN_NOISE = re.compile(
    r"E\d{4} \d\d:\d\d:[\d.]+\s+\d+ cuda_\w+\.cc:\d+\] failed call to cuInit: "
)
_NATIVE_MODULES = ("tensorflow",)
_verbose = False
_OURS: dict[str, str] = {}  # environment variables featurecache set (not the user)
_LOCK = threading.RLock()
log = logging.getLogger(__name__)


def configure(*, verbose: bool) -> None:
    """Let TensorFlow's and absl's lines through (``verbose``) or keep them out (default).

    Must run before TensorFlow is imported to affect ``TF_CPP_MIN_LOG_LEVEL``. A value
    the user set in the environment is always kept.
    """
    global _verbose
    _verbose = verbose
    ours = _OURS.pop("TF_CPP_MIN_LOG_LEVEL", None) if verbose else None
    if ours is not None and os.environ.get("TF_CPP_MIN_LOG_LEVEL") == ours:
        del os.environ["TF_CPP_MIN_LOG_LEVEL"]
    logging.getLogger("absl").setLevel(logging.NOTSET if verbose else logging.ERROR)


def _quiet_environment() -> None:
    if "TF_CPP_MIN_LOG_LEVEL" not in os.environ:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = _OURS["TF_CPP_MIN_LOG_LEVEL"] = "2"
    logging.getLogger("absl").setLevel(logging.ERROR)


@contextmanager
def quiet_import() -> Iterator[None]:
    """Import TensorFlow (or anything that imports it) inside this block without its
    import-time notices on stderr.

    Everything written to file descriptor 2 during the block is held in a temporary
    file and written back afterwards, except the lines :data:`IMPORT_NOTICE` and
    :data:`KNOWN_NOISE` match; so a real error message (or a traceback) still reaches
    stderr. When the block imported TensorFlow, its devices are listed before fd 2 is
    let go (:func:`_list_devices`). Threads take turns (fd 2
    is per process). Does nothing when verbose, when TensorFlow is already imported, or
    when there is no fd 2 or no room for the temporary file. A crash inside the import
    (a C-level abort) loses what was held: run with ``--verbose`` to see it.
    """
    with _LOCK:
        if _verbose or any(m in sys.modules for m in _NATIVE_MODULES):
            yield
            return
        _quiet_environment()
        try:
            sys.stderr.flush()
            held = tempfile.TemporaryFile()
        except (OSError, ValueError, AttributeError):  # no stderr, or no room in TMPDIR
            yield
            return
        try:
            saved = os.dup(2)
        except OSError:  # no fd 2 (an embedded interpreter)
            held.close()
            yield
            return
        try:
            os.dup2(held.fileno(), 2)
            yield
            _list_devices()
        finally:
            os.dup2(saved, 2)  # restore first: nothing below may leave fd 2 redirected
            os.close(saved)
            _replay(held)


def _list_devices() -> None:
    """List TensorFlow's devices, if it is imported: TensorFlow initialises CUDA (its
    GPU device factory asks XLA for the CUDA platform, which calls ``cuInit``) when
    devices are first listed, so a failure line is written now, while fd 2 is held,
    rather than in the middle of a run."""
    tensorflow = sys.modules.get("tensorflow")
    if tensorflow is None:
        return
    try:
        tensorflow.config.list_physical_devices()
    except Exception as exc:  # building the model meets it again, and says it
        log.debug("listing TensorFlow's devices failed: %s", exc)


def _replay(held: Any) -> None:
    """Write what ``held`` caught to stderr, less TensorFlow's import notices and its
    known noise."""
    with held:
        held.seek(0)
        text = held.read().decode("utf-8", "replace")
    kept = [
        line
        for line in text.splitlines(keepends=True)
        if not (IMPORT_NOTICE.match(line) or KNOWN_NOISE.match(line))
    ]
    if kept:
        sys.stderr.write("".join(kept))
        sys.stderr.flush()
