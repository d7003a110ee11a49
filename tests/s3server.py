"""A real S3-compatible server on loopback for tests: moto behind a counting, faulty proxy.

Tests of code that reads ``s3://`` URLs through fsspec/s3fs need to know what reached
the server (how many object GETs, which byte ranges) and how the code copes when the
server misbehaves (a connection dropped mid-object, a 503, the server gone). In-process
mocks cannot show either: s3fs talks HTTP through aiohttp, so the counting and the
faults have to happen on a real socket. Hence two servers on 127.0.0.1:

- moto's ``ThreadedMotoServer`` (werkzeug), one per process, which holds the buckets;
- a small threaded HTTP/1.1 proxy in front of it (tests/s3proxy.py, standard library
  only), which records every request, forwards it to moto, and writes moto's answer
  back, or a fault in its place.

``S3Server.env`` points the AWS SDKs at the proxy, so every request of the code under
test is seen; ``S3Server.client()`` talks to moto directly, so a test's own uploads and
checks are not counted. ``stop()`` closes the proxy (connections refused, keep-alive
connections cut) while moto keeps its objects; ``start()`` reopens it on the same port.

moto keeps its state in module-level backends: every moto server in this process (and
``moto.mock_aws``) sees the same buckets. ``reset()`` empties them.

Typical use, from a conftest.py::

    from tests.s3server import s3_fixture

    s3server = s3_fixture("data")  # a fixture: env set, bucket "data" created

    def test_reads_each_shard_once(s3server):
        s3server.client().put_object(Bucket="data", Key="a.tar", Body=b"...")
        ...  # code under test reads s3://data/a.tar
        assert len(s3server.object_gets("data/a.tar")) == 1
"""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tests.s3proxy import Proxy, Request, Traffic

__all__ = ["Request", "S3Server", "s3_fixture"]

_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


_moto_lock = threading.Lock()
_moto_address: tuple[str, int] | None = None


def _moto() -> tuple[str, int]:
    """The address of this process's moto server, started on first use on a free port
    and kept until the process exits. One is enough: moto keeps its buckets in
    module-level backends that every moto server in the process shares anyway, and
    stopping werkzeug costs half a second (its polling interval) per test."""
    global _moto_address
    from moto.server import ThreadedMotoServer

    with _moto_lock:
        if _moto_address is None:
            logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request
            server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
            server.start()
            _moto_address = server.get_host_and_port()
        return _moto_address


class S3Server(Traffic):
    """moto's S3 on 127.0.0.1 behind a proxy that counts requests and injects faults.

    The proxy listens on a free port chosen by the OS; moto is this process's one moto
    server (started on first use), or the one at the address ``moto`` (a server in its
    own process, from :func:`moto_process`, so that its work does not share this
    process's interpreter lock with the code under test: what benchmarks want). Use as a
    context manager, or call ``start()`` and ``stop()``; ``s3_fixture`` makes a pytest
    fixture of it. What reached the server (``requests``, ``object_gets``...) and the
    faults to inject (``drop_after``, ``fail_next``) are ``Traffic``'s methods, in
    tests/s3proxy.py.

    Attributes
    ----------
    env : dict of str to str
        Credentials, region and ``AWS_ENDPOINT_URL`` (the proxy) to put in the
        environment of the code under test; boto3, s3fs and Dask workers read them.
        s3fs caches filesystem instances, so create the filesystem after setting them,
        with ``skip_instance_cache=True``.
    """

    def __init__(self, moto: tuple[str, int] | None = None) -> None:
        super().__init__()
        self._moto_given = moto
        self._moto_address: tuple[str, int] | None = None
        self._proxy: Proxy | None = None
        self._port = 0
        self.env: dict[str, str] = {}

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> S3Server:
        """Start the proxy (and moto, the first time in this process), on the port the
        proxy had before if it was stopped. Returns self."""
        self._moto_address = self._moto_given or _moto()
        if self._proxy is None:
            self._proxy = Proxy(self._port, self._moto_address, self)
            self._port = self._proxy.server_address[1]
        self.env = {
            **_CREDENTIALS,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_EC2_METADATA_DISABLED": "true",  # never wait on the instance metadata
        }
        return self

    def stop(self) -> None:
        """The server goes down: the proxy stops listening (new connections are refused)
        and cuts the connections it had. moto keeps running, and its objects."""
        if self._proxy is not None:
            self._proxy.close()
            self._proxy = None

    def reset(self) -> None:
        """Empty moto: every bucket of every moto server in this process goes (the
        fixture of ``s3_fixture`` does this after each use)."""
        request = urllib.request.Request(f"{self.moto_endpoint}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10):
            pass

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """Whether the proxy accepts connections (False between stop() and start())."""
        return self._proxy is not None

    @property
    def endpoint(self) -> str:
        """The proxy's URL, ``http://127.0.0.1:PORT``: what the code under test uses."""
        return f"http://127.0.0.1:{self._port}"

    @property
    def moto_endpoint(self) -> str:
        """moto's own URL, past the proxy: nothing sent there is counted."""
        if self._moto_address is None:
            raise RuntimeError("S3Server is not started: call start() or use `with`")
        host, port = self._moto_address
        return f"http://{host}:{port}"

    def client(self) -> Any:
        """A boto3 S3 client talking to moto directly, for a test's own setup and checks
        (not recorded, never faulted, working while the server is stopped)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.moto_endpoint,
            aws_access_key_id=_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            region_name=_CREDENTIALS["AWS_DEFAULT_REGION"],
        )


@contextmanager
def moto_process() -> Iterator[tuple[str, int]]:
    """moto's server in a process of its own on a free port of 127.0.0.1 (its address),
    stopped on exit. Its buckets are its own: :meth:`S3Server.reset` empties them."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "moto.server", "--host", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):  # up to 30 s for it to listen
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=1):
                    break
            except OSError:
                if process.poll() is not None:
                    raise RuntimeError(f"moto's server exited ({process.returncode})") from None
                time.sleep(0.1)
        yield ("127.0.0.1", port)
    finally:
        process.terminate()
        process.wait(timeout=10)


def s3_fixture(*buckets: str, scope: str = "function", name: str | None = None) -> Any:
    """A pytest fixture yielding a started S3Server, its ``env`` set in os.environ,
    ``buckets`` created (uncounted), and moto emptied afterwards.

    Assign it in a conftest.py or test module: ``s3server = s3_fixture("data")``.
    ``scope`` is pytest's; ``name`` renames the fixture.
    """
    import pytest

    @pytest.fixture(scope=scope, name=name)
    def s3server() -> Iterator[S3Server]:
        with S3Server() as server, pytest.MonkeyPatch.context() as patch:
            for key, value in server.env.items():
                patch.setenv(key, value)
            client = server.client()
            for bucket in buckets:
                client.create_bucket(Bucket=bucket)
            try:
                yield server
            finally:
                server.reset()

    return s3server
