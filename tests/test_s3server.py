"""tests/s3server.py: s3fs works through the proxy, which counts what reached the server
and injects faults. The tests also pin down how s3fs 2026.9 (aiobotocore 3.10) reacts
to each fault, since featurecache's fetch code is written against that behaviour."""

from __future__ import annotations

import errno
import http.client
import os
import re
import time

import botocore.exceptions
import fsspec
import pytest
from aiohttp import ClientPayloadError

from tests.s3server import Request, S3Server, moto_process, s3_fixture

BUCKET = "s3server-test"
s3server = s3_fixture(BUCKET)

# botocore's "max_attempts" counts retries; "total_max_attempts" counts attempts (and so
# does AWS_MAX_ATTEMPTS). One attempt: botocore does not retry connection errors or
# 5xx with its randomised backoff (up to 8 s in all, in its default legacy mode).
NO_BOTOCORE_RETRIES = {"retries": {"total_max_attempts": 1}}


def s3fs_filesystem(**kwargs):
    """A new s3fs filesystem, reading the environment now (fsspec caches instances)."""
    return fsspec.filesystem("s3", skip_instance_cache=True, **kwargs)


def test_s3fs_round_trip_counts_object_gets_at_the_server(s3server):
    s3server.client().put_object(Bucket=BUCKET, Key="setup.bin", Body=b"setup")
    assert s3server.requests() == []  # client() talks to moto directly
    fs = s3fs_filesystem()

    fs.pipe(f"{BUCKET}/x/a.bin", b"0123456789")
    assert [(r.method, r.key) for r in s3server.requests()] == [("PUT", "x/a.bin")]
    s3server.clear()

    (entry,) = fs.ls(f"{BUCKET}/x", detail=True)
    assert entry["name"] == f"{BUCKET}/x/a.bin" and entry["size"] == 10
    assert entry["ETag"].strip('"') == "781e5e245d69b566979b86e28d23f2c7"  # md5 of the bytes
    assert s3server.object_gets() == [] and len(s3server.requests()) == 1  # one listing

    assert fs.cat(f"{BUCKET}/x/a.bin") == b"0123456789"  # size from the listing: no HEAD
    assert s3server.object_gets(f"s3://{BUCKET}/x/") == [
        Request("GET", f"/{BUCKET}/x/a.bin", "", None)
    ]
    assert s3server.object_gets("other-bucket/") == []


def test_ranged_reads_are_recorded_with_their_range(s3server):
    s3server.client().put_object(Bucket=BUCKET, Key="r.bin", Body=bytes(range(256)))
    fs = s3fs_filesystem()
    assert fs.cat_file(f"{BUCKET}/r.bin", start=10, end=20) == bytes(range(10, 20))
    assert [r.range for r in s3server.object_gets()] == ["bytes=10-19"]


@pytest.mark.parametrize(
    ("method", "path", "query", "is_object_get"),
    [
        ("GET", "/b/k", "", True),
        ("GET", "/b/dir/k%20x", "x-id=GetObject&versionId=3", True),
        ("GET", "/b", "list-type=2&prefix=k", False),
        ("GET", "/b/", "list-type=2", False),
        ("HEAD", "/b/k", "", False),
        ("GET", "/b/k", "tagging", False),
        ("GET", "/b/k", "uploadId=7", False),
        ("GET", "/b/k", "x-id=GetObjectAttributes", False),
    ],
)
def test_an_object_get_fetches_bytes(method, path, query, is_object_get):
    assert Request(method, path, query, None).is_object_get is is_object_get
    assert Request("GET", "/b/dir/k%20x", "", None).key == "dir/k x"


def test_multipart_upload_and_chunked_bodies_pass_the_proxy(s3server):
    fs = s3fs_filesystem()
    data = os.urandom(6 * 2**20)
    with fs.open(f"{BUCKET}/big.bin", "wb", block_size=5 * 2**20) as f:
        f.write(data)
    uploads = [(r.method, r.query.partition("=")[0]) for r in s3server.requests()]
    assert ("POST", "uploads") in uploads and ("PUT", "partNumber") in uploads
    got = s3server.client().get_object(Bucket=BUCKET, Key="big.bin")
    assert got["Body"].read() == data
    assert re.fullmatch(r'"[0-9a-f]{32}-1"', got["ETag"])  # a multipart ETag: md5 of md5s-parts

    # a chunked request body (aiohttp sends one for a streamed body), by hand
    connection = http.client.HTTPConnection("127.0.0.1", int(s3server.endpoint.split(":")[-1]))
    scope = "testing/20260101/us-east-1/s3/aws4_request"  # moto routes by the scope
    headers = {"Authorization": f"AWS4-HMAC-SHA256 Credential={scope}, Signature=0"}
    connection.request("PUT", f"/{BUCKET}/chunked", iter([b"ab", b"cd"]), headers)
    assert connection.getresponse().status == 200
    connection.close()
    assert s3server.client().get_object(Bucket=BUCKET, Key="chunked")["Body"].read() == b"abcd"


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "rst"])
def test_a_dropped_connection_raises_client_payload_error_after_s3fs_retries(s3server, reset):
    """s3fs retries a short body itself (fs.retries attempts, 5 by default, sleeping
    0.1 * 1.7**i s after each: 1.9 s for 5), then raises aiohttp's ClientPayloadError
    as is: not an OSError."""
    s3server.client().put_object(Bucket=BUCKET, Key="shard.tar", Body=bytes(5000))
    fs = s3fs_filesystem()
    fs.ls(BUCKET)  # sizes cached: cat sends no HEAD

    s3server.drop_after("shard", 100, reset=reset)
    assert fs.cat(f"{BUCKET}/shard.tar") == bytes(5000)  # one drop: retried, whole
    assert len(s3server.object_gets()) == 2

    s3server.clear()
    fs.retries = 2
    s3server.drop_after("shard", 100, times=2, reset=reset)
    with pytest.raises(ClientPayloadError, match="Response payload is not completed"):
        fs.cat(f"{BUCKET}/shard.tar")
    assert len(s3server.object_gets()) == 2


def test_injected_errors(s3server):
    """A 503 (S3's SlowDown) is retried by s3fs even with botocore's retries off; a 500
    is not, and s3fs turns it into an OSError."""
    s3server.client().put_object(Bucket=BUCKET, Key="k.bin", Body=b"bytes")
    fs = s3fs_filesystem(config_kwargs=NO_BOTOCORE_RETRIES)
    fs.ls(BUCKET)

    s3server.fail_next(1, status=503, key_substring="k.bin")
    assert fs.cat(f"{BUCKET}/k.bin") == b"bytes"
    assert len(s3server.object_gets()) == 2

    s3server.fail_next(1, status=500)
    with pytest.raises(OSError, match="injected by tests/s3server.py") as raised:
        fs.cat(f"{BUCKET}/k.bin")
    assert raised.value.errno == errno.EREMOTEIO
    assert isinstance(raised.value.__cause__, botocore.exceptions.ClientError)


def test_a_stopped_server_refuses_connections_and_comes_back_on_the_same_port(s3server):
    s3server.client().put_object(Bucket=BUCKET, Key="k.bin", Body=b"bytes")
    fs = s3fs_filesystem(config_kwargs=NO_BOTOCORE_RETRIES)
    endpoint = s3server.endpoint
    assert fs.cat(f"{BUCKET}/k.bin") == b"bytes"  # a keep-alive connection, cut by stop()

    s3server.stop()
    s3server.clear()
    started = time.monotonic()
    with pytest.raises(botocore.exceptions.EndpointConnectionError):
        fs.cat(f"{BUCKET}/k.bin")
    assert time.monotonic() - started < 2  # refused at once, and not retried
    assert s3server.requests() == [] and not s3server.running
    assert s3server.client().head_object(Bucket=BUCKET, Key="k.bin")["ContentLength"] == 5

    s3server.start()
    assert s3server.endpoint == endpoint and s3server.env["AWS_ENDPOINT_URL"] == endpoint
    assert fs.cat(f"{BUCKET}/k.bin") == b"bytes"


def test_without_credentials_the_first_request_raises_no_credentials_error(
    s3server, monkeypatch, tmp_path
):
    """Not when the filesystem is made; nothing reaches the server."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.aws
    fs = s3fs_filesystem()
    with pytest.raises(botocore.exceptions.NoCredentialsError):
        fs.ls(BUCKET)
    assert s3server.requests() == []


def test_the_server_as_a_context_manager():
    with S3Server() as server:
        assert server.env["AWS_ENDPOINT_URL"] == server.endpoint != server.moto_endpoint
        server.client().create_bucket(Bucket="context-bucket")
        assert server.client().list_buckets()["Buckets"]
        server.reset()
        assert server.client().list_buckets()["Buckets"] == []
    assert not server.running


def test_moto_in_a_process_of_its_own_serves_through_the_proxy(monkeypatch):
    with moto_process() as address, S3Server(address) as server:
        assert server.moto_endpoint.endswith(f":{address[1]}")
        server.client().create_bucket(Bucket="own-process")
        for key, value in server.env.items():
            monkeypatch.setenv(key, value)
        s3fs_filesystem().pipe("own-process/a.bin", b"abc")
        body = server.client().get_object(Bucket="own-process", Key="a.bin")["Body"]
        assert body.read() == b"abc"
        assert [(r.method, r.key) for r in server.requests()] == [("PUT", "a.bin")]
