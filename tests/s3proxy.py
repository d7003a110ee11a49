"""A counting, fault-injecting HTTP/1.1 proxy for tests/s3server.py (standard library only).

It sits between the code under test (s3fs over aiohttp, boto3 over urllib3) and moto:
each request is parsed (request line, headers, body by Content-Length or chunked),
recorded, forwarded to moto over a fresh connection, and moto's whole response is
written back with a Content-Length, on the client's keep-alive connection. A fault
takes the place of moto's answer: an error status, or a body cut short.

``Traffic`` is what a test reads and steers (the requests seen, the faults to come);
``S3Server`` is one. ``Proxy`` is the listening side, owned by ``S3Server``.
"""

from __future__ import annotations

import http.client
import socket
import socketserver
import struct
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, unquote

__all__ = ["Proxy", "Request", "Traffic"]

# Headers that describe one hop, not the message (RFC 9110 section 7.6.1): the proxy
# answers for them itself on each side. Expect is answered by the proxy too
# (BaseHTTPRequestHandler sends "100 Continue"), and the length is set anew.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",
        "content-length",
    }
)

# Query parameters a GetObject request may carry (botocore adds x-id=GetObject); any
# other parameter (tagging, acl, uploadId, attributes, list-type...) names a
# sub-resource or a listing, not the object's bytes.
_GET_OBJECT_PARAMS = frozenset({"x-id", "versionId", "partNumber"})


class Request(NamedTuple):
    """One request as it reached the proxy.

    ``path`` and ``query`` are as sent (percent-encoded, path-style addressing:
    ``/bucket/key``); ``range`` is the Range header (``"bytes=0-99"``) or None.
    """

    method: str
    path: str
    query: str
    range: str | None

    @property
    def bucket(self) -> str:
        """The bucket the path names ("" for the service root)."""
        return unquote(self.path.lstrip("/").partition("/")[0])

    @property
    def key(self) -> str:
        """The object key the path names, decoded ("" for a bucket-level request)."""
        return unquote(self.path.lstrip("/").partition("/")[2])

    @property
    def is_object_get(self) -> bool:
        """A GET that fetches an object's bytes: GET on a key, with no sub-resource.

        Listings (``GET /bucket?list-type=2``), HEADs and ``GET /bucket/key?tagging``
        are not.
        """
        if self.method != "GET" or not self.key:
            return False
        params = dict(parse_qsl(self.query, keep_blank_values=True))
        if params.get("x-id", "GetObject") != "GetObject":
            return False
        return all(p in _GET_OBJECT_PARAMS or p.startswith("response-") for p in params)


@dataclass
class _Drop:
    """Cut the next ``times`` object GETs whose key contains ``key_substring`` after
    ``n_bytes`` of body; with ``reset``, by a TCP reset instead of an orderly close."""

    key_substring: str
    n_bytes: int
    times: int
    reset: bool


@dataclass
class _Failure:
    """Answer the next ``times`` requests (whose key contains ``key_substring``) with
    ``status`` and an S3 error document, without asking moto."""

    key_substring: str | None
    status: int
    times: int


def _use(faults: list[Any], fault: Any) -> Any:
    """One use of ``fault``: removed from ``faults`` once it has none left."""
    fault.times -= 1
    if fault.times <= 0:
        faults.remove(fault)
    return fault


class Traffic:
    """The requests that reached the proxy and the faults it is to inject, under one
    lock: the proxy serves each client connection on a thread of its own."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: list[Request] = []
        self._drops: list[_Drop] = []
        self._failures: list[_Failure] = []

    # -- what reached the server -------------------------------------------------------

    def _record(self, request: Request) -> None:
        with self._lock:
            self._requests.append(request)

    def requests(self) -> list[Request]:
        """Every request through the proxy since the start or the last clear(), in the
        order they arrived (faulted ones included)."""
        with self._lock:
            return list(self._requests)

    def clear(self) -> None:
        """Forget the requests recorded so far (faults still pending stay)."""
        with self._lock:
            self._requests.clear()

    def gets_of(self, predicate: Callable[[Request], bool]) -> list[Request]:
        """The object GETs (``Request.is_object_get``) for which ``predicate`` holds."""
        return [r for r in self.requests() if r.is_object_get and predicate(r)]

    def object_gets(self, prefix: str = "") -> list[Request]:
        """The object GETs of keys under ``prefix``, written ``bucket/key...`` (an
        ``s3://`` in front is allowed), e.g. ``object_gets("data/shards/")``."""
        prefix = prefix.removeprefix("s3://")
        return self.gets_of(lambda r: f"{r.bucket}/{r.key}".startswith(prefix))

    # -- faults to inject --------------------------------------------------------------------------

    def drop_after(
        self, key_substring: str, n_bytes: int, times: int = 1, *, reset: bool = False
    ) -> None:
        """The next ``times`` successful object GETs (200 or 206) of a key containing
        ``key_substring`` get moto's status and headers (the full Content-Length) and
        only the first ``n_bytes`` bytes of the body; then the connection is closed: a
        connection dropped mid-object. With ``reset``, closed by a TCP reset (RST)
        rather than an orderly close (FIN)."""
        with self._lock:
            self._drops.append(_Drop(key_substring, n_bytes, times, reset))

    def fail_next(self, n: int = 1, status: int = 503, key_substring: str | None = None) -> None:
        """The next ``n`` requests (of any kind; with ``key_substring``, those whose key
        contains it) are answered with ``status`` and an S3 error document, code
        SlowDown for 503 and InternalError for 500, without reaching moto. A HEAD gets
        the status alone, as from S3, so clients see no error code for it."""
        with self._lock:
            self._failures.append(_Failure(key_substring, status, n))

    def clear_faults(self) -> None:
        """Cancel the faults not yet injected."""
        with self._lock:
            self._drops.clear()
            self._failures.clear()

    def _take_failure(self, request: Request) -> _Failure | None:
        """The failure ``request`` is to get, if any, used up by one."""
        with self._lock:
            for failure in self._failures:
                wanted = failure.key_substring
                if wanted is None or wanted in request.key:
                    return _use(self._failures, failure)
        return None

    def _take_drop(self, request: Request) -> _Drop | None:
        """The drop ``request`` is to get, if any, used up by one."""
        if not request.is_object_get:
            return None
        with self._lock:
            for drop in self._drops:
                if drop.key_substring in request.key:
                    return _use(self._drops, drop)
        return None


class Proxy(socketserver.ThreadingTCPServer):
    """The listening side: one daemon thread per client connection, and a set of the
    open connections so that ``close()`` can cut keep-alive connections too (a server
    that went down does not keep serving the clients it had)."""

    daemon_threads = True
    allow_reuse_address = True  # rebind the same port right after stop()

    def __init__(self, port: int, upstream: tuple[str, int], traffic: Traffic) -> None:
        self.upstream = upstream
        self.traffic = traffic
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(("127.0.0.1", port), _ProxyHandler)
        self.thread = threading.Thread(
            target=self.serve_forever, args=(0.02,), name="s3proxy", daemon=True
        )  # polling every 20 ms: close() waits for the poll
        self.thread.start()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that hang up, and connections cut by ``close()``, are expected; any
        other error is a bug of the proxy, printed to stderr by socketserver."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        self.thread.join()
        with self._open_lock:
            connections = list(self._open)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already gone


class _ProxyHandler(BaseHTTPRequestHandler):
    """One client connection: each request is recorded, then answered by a fault or by
    moto's full response, written back with a Content-Length."""

    protocol_version = "HTTP/1.1"  # keep-alive, as aiohttp expects
    server: Proxy

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: tests that want the traffic read ``S3Server.requests()``."""

    def __getattr__(self, name: str) -> Any:
        # BaseHTTPRequestHandler dispatches to do_<METHOD>; every method is forwarded.
        if name.startswith("do_"):
            return self._forward
        raise AttributeError(name)

    def _forward(self) -> None:
        path, _, query = self.path.partition("?")
        request = Request(self.command, path, query, self.headers.get("Range"))
        body = self._read_body()
        traffic = self.server.traffic
        traffic._record(request)
        failure = traffic._take_failure(request)
        if failure is not None:
            self._write_error(failure.status)
            return
        status, reason, headers, payload = self._ask_moto(body)
        drop = traffic._take_drop(request) if status in (200, 206) else None
        self._write_head(status, reason, headers, len(payload))
        if drop is None:
            self.wfile.write(payload)
            return
        self.wfile.write(payload[: drop.n_bytes])
        self.wfile.flush()
        self.close_connection = True
        if drop.reset:  # SO_LINGER 0: close() sends RST, and no FIN goes first
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()

    def _read_body(self) -> bytes:
        """The request body, by Content-Length or chunked transfer coding."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailer fields
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()  # the CRLF after each chunk
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def _ask_moto(self, body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
        """moto's whole response to this request, over a fresh connection. The Host
        header goes through unchanged: the client signed it."""
        upstream = http.client.HTTPConnection(*self.server.upstream, timeout=60)
        try:
            upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                if name.lower() not in _HOP_BY_HOP:
                    upstream.putheader(name, value)
            if body or self.command in ("PUT", "POST"):
                upstream.putheader("Content-Length", str(len(body)))
            upstream.endheaders(body or None)
            response = upstream.getresponse()
            payload = response.read()
            headers = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP]
            if not self._has_body(response.status):  # a HEAD keeps the object's length
                headers += [
                    (k, v) for k, v in response.getheaders() if k.lower() == "content-length"
                ]
            return response.status, response.reason, headers, payload
        finally:
            upstream.close()

    def _has_body(self, status: int) -> bool:
        """Whether a response with ``status`` to this request carries a body (RFC 9110
        section 6.4.1: not for HEAD, 1xx, 204 and 304)."""
        return self.command != "HEAD" and status >= 200 and status not in (204, 304)

    def _write_head(
        self, status: int, reason: str, headers: list[tuple[str, str]], length: int
    ) -> None:
        lines = [f"HTTP/1.1 {status} {reason}"]
        lines += [f"{name}: {value}" for name, value in headers]
        if self._has_body(status):
            lines.append(f"Content-Length: {length}")
        if self.close_connection:
            lines.append("Connection: close")
        self.wfile.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    def _write_error(self, status: int) -> None:
        """An S3 error document, as S3 sends one (503 is S3's SlowDown)."""
        code = {503: "SlowDown", 500: "InternalError"}.get(status, "InjectedFault")
        document = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>injected by tests/s3server.py</Message>"
            "</Error>"
        ).encode()
        try:
            reason = http.HTTPStatus(status).phrase
        except ValueError:
            reason = "Error"
        headers = [("Content-Type", "application/xml")]
        if self.command == "HEAD":
            headers.append(("Content-Length", str(len(document))))
        self._write_head(status, reason, headers, len(document))
        if self.command != "HEAD":
            self.wfile.write(document)
