"""What only the S3 backend has: buckets, credentials, endpoints, multipart, metadata."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import threading
import urllib.request
import uuid
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import dcore.backends.s3 as s3_module
from dcore._core.environment import Environment
from dcore._core.settings import DcoreSettings
from dcore._plugins.registry import default_registry
from dcore.backends.s3 import S3Storage
from dcore.errors import InvalidKeyError, ServiceUnavailableError, StorageError
from dcore.services.storage import StorageInterface
from dcore_testing.fixtures.s3 import (
    S3Endpoint,
    empty_and_delete_bucket,
    endpoint_client,
    mock_s3_storage,
)

MiB = 1024 * 1024
SECRET = "do-not-print-this-secret-0123456789"


def make(endpoint: S3Endpoint, bucket: str, **options: Any) -> S3Storage:
    """A storage with its own client, so event hooks registered on it stay in the test."""
    defaults: dict[str, Any] = {
        "endpoint_url": endpoint.url,
        "bucket": bucket,
        "region": endpoint.region,
        "access_key": endpoint.access_key,
        "secret_key": endpoint.secret_key,
    }
    return S3Storage(**{**defaults, **options})


def count_calls(storage: S3Storage) -> Counter[str]:
    """Count the API operations the storage's client sends (botocore's event hooks, run
    on every thread sending a part)."""
    calls: Counter[str] = Counter()
    lock = threading.Lock()

    def hook(event_name: str, **_: Any) -> None:
        with lock:
            calls[event_name.rsplit(".", 1)[-1]] += 1

    storage.client.meta.events.register("before-call.s3", hook)
    return calls


def pending_uploads(endpoint: S3Endpoint, bucket: str) -> list[Any]:
    return endpoint_client(endpoint).list_multipart_uploads(Bucket=bucket).get("Uploads", [])


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def chunks_of(total: int, size: int = MiB) -> Iterator[bytes]:
    block = bytes(range(256)) * (size // 256)
    sent = 0
    while sent < total:
        piece = block[: min(size, total - sent)]
        sent += len(piece)
        yield piece


def sha_of(total: int) -> str:
    digest = hashlib.sha256()
    for chunk in chunks_of(total):
        digest.update(chunk)
    return digest.hexdigest()


# -- registration and configuration ------------------------------------------------------


def test_registered_as_s3_and_minio() -> None:
    for name in ("s3", "minio"):
        assert default_registry().get(StorageInterface, name) is S3Storage


def test_the_module_imports_and_registers_without_boto3() -> None:
    code = (
        "import sys; sys.modules['boto3'] = sys.modules['botocore'] = None\n"
        "from dcore.backends.s3 import S3Storage\n"
        "from dcore._plugins.registry import default_registry\n"
        "from dcore.services.storage import StorageInterface\n"
        "assert default_registry().get(StorageInterface, 'minio') is S3Storage\n"
        "try:\n"
        "    S3Storage()\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    assert "pip install 'distributed-core[s3]'" in result.stdout


def test_from_environment_reads_the_s3_settings(dcore_s3_endpoint: S3Endpoint) -> None:
    bucket = f"dcore-env-{uuid.uuid4().hex[:12]}"
    settings = DcoreSettings(
        storage="minio",
        s3_endpoint=dcore_s3_endpoint.url,
        s3_bucket=bucket,
        s3_region=dcore_s3_endpoint.region,
        s3_access_key=dcore_s3_endpoint.access_key,
        s3_secret_key=dcore_s3_endpoint.secret_key,  # type: ignore[arg-type]
        s3_create_bucket=True,
    )
    try:
        with Environment(settings) as env:
            storage = env.storage
            assert isinstance(storage, S3Storage)
            assert (storage.endpoint, storage.bucket) == (dcore_s3_endpoint.url, bucket)
            storage.put("k", b"v")  # creates the bucket on first use
            client = endpoint_client(dcore_s3_endpoint)
            assert client.get_object(Bucket=bucket, Key="k")["Body"].read() == b"v"
    finally:
        drop_bucket(dcore_s3_endpoint, bucket)


def drop_bucket(endpoint: S3Endpoint, bucket: str) -> None:
    empty_and_delete_bucket(endpoint_client(endpoint), bucket)


def test_client_has_timeouts_retries_and_path_style() -> None:
    config = S3Storage(endpoint_url="http://127.0.0.1:9", max_attempts=4).client.meta.config
    assert (config.connect_timeout, config.read_timeout) == (5.0, 60.0)
    assert config.retries == {"total_max_attempts": 4, "mode": "standard"}
    assert config.s3 == {"addressing_style": "path"}
    assert config.max_pool_connections == 10


def test_the_connection_pool_holds_every_part_in_flight() -> None:
    storage = S3Storage(endpoint_url="http://127.0.0.1:9", max_concurrency=16)
    assert storage.client.meta.config.max_pool_connections == 16


@pytest.mark.parametrize(
    "options",
    [
        {"multipart_chunk_size": 5 * MiB - 1},
        {"multipart_threshold": 0},
        {"page_size": 1001},
        {"max_attempts": 0},
        {"max_concurrency": 0},
    ],
)
def test_options_outside_s3_limits_are_refused(options: dict[str, Any]) -> None:
    name = next(iter(options))
    with pytest.raises(ValueError, match=name):
        S3Storage(endpoint_url="http://127.0.0.1:9", **options)


# -- errors ---------------------------------------------------------------------------------


def test_a_missing_bucket_names_bucket_endpoint_and_the_fix(
    dcore_s3_endpoint: S3Endpoint, dcore_s3_bucket: str
) -> None:
    storage = make(dcore_s3_endpoint, "dcore-no-such-bucket")
    with pytest.raises(StorageError) as caught:
        storage.put("k", b"v")
    message = str(caught.value)
    assert "'dcore-no-such-bucket'" in message
    assert dcore_s3_endpoint.url in message
    assert "DCORE_S3_CREATE_BUCKET=true" in message
    buckets = [b["Name"] for b in endpoint_client(dcore_s3_endpoint).list_buckets()["Buckets"]]
    assert "dcore-no-such-bucket" not in buckets


def test_create_bucket_makes_the_missing_bucket_on_first_use(dcore_s3_endpoint: S3Endpoint) -> None:
    bucket = f"dcore-on-use-{uuid.uuid4().hex[:12]}"
    storage = make(dcore_s3_endpoint, bucket, create_bucket=True)
    try:
        storage.put("k", b"v")
        assert make(dcore_s3_endpoint, bucket).get("k") == b"v"
    finally:
        drop_bucket(dcore_s3_endpoint, bucket)


def test_a_bucket_deleted_after_first_use_is_reported_with_the_fix(
    dcore_s3_endpoint: S3Endpoint, dcore_s3_bucket: str
) -> None:
    storage = make(dcore_s3_endpoint, dcore_s3_bucket)
    storage.put("k", b"v")
    drop_bucket(dcore_s3_endpoint, dcore_s3_bucket)
    for call in (lambda: storage.put("k", b"v"), lambda: list(storage.list())):
        with pytest.raises(StorageError, match="DCORE_S3_CREATE_BUCKET=true") as caught:
            call()
        assert f"{dcore_s3_bucket!r} does not exist at {dcore_s3_endpoint.url}" in str(caught.value)


@pytest.fixture
def enforced_auth(dcore_s3_endpoint: S3Endpoint) -> Iterator[None]:
    """moto accepts any credentials unless told to check them (its /moto-api/reset-auth);
    a real MinIO always checks."""
    if not dcore_s3_endpoint.in_process:
        yield
        return

    def set_auth(count: str) -> None:
        request = urllib.request.Request(
            f"{dcore_s3_endpoint.url}/moto-api/reset-auth",
            data=count.encode(),
            method="POST",
            headers={"Content-Type": "text/plain"},  # a form type would hide the body
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200

    set_auth("0")
    try:
        yield
    finally:
        set_auth("inf")


def assert_secret_hidden(exc: BaseException) -> None:
    seen: BaseException | None = exc
    while seen is not None:
        assert SECRET not in str(seen)
        assert SECRET not in repr(seen)
        seen = seen.__cause__ or seen.__context__


@pytest.mark.usefixtures("enforced_auth")
def test_bad_credentials_name_the_endpoint_and_the_fix_not_the_secret(
    dcore_s3_endpoint: S3Endpoint,
) -> None:
    storage = make(
        dcore_s3_endpoint, "dcore-any-bucket", access_key="AKIAWRONGWRONGWRONG", secret_key=SECRET
    )
    with pytest.raises(ServiceUnavailableError) as caught:
        storage.put("k", b"v")
    message = str(caught.value)
    assert dcore_s3_endpoint.url in message
    assert "AKIAWRONGWRONGWRONG" in message
    assert "DCORE_S3_SECRET_KEY" in message
    assert_secret_hidden(caught.value)
    assert SECRET not in repr(storage)


@pytest.mark.parametrize("op", ["put", "get", "list", "exists"])
def test_an_unreachable_endpoint_names_the_endpoint_not_the_secret(op: str) -> None:
    endpoint = f"http://127.0.0.1:{closed_port()}"
    storage = S3Storage(
        endpoint_url=endpoint,
        bucket="b",
        access_key="AKIAEXAMPLE",
        secret_key=SECRET,
        max_attempts=1,
        connect_timeout=1.0,
    )
    calls = {
        "put": lambda: storage.put("k", b"v"),
        "get": lambda: storage.get("k"),
        "list": lambda: list(storage.list()),
        "exists": lambda: storage.exists("k"),
    }
    with pytest.raises(ServiceUnavailableError, match="unreachable") as caught:
        calls[op]()
    assert endpoint in str(caught.value)
    assert isinstance(caught.value, ConnectionError)
    assert_secret_hidden(caught.value)
    assert SECRET not in repr(storage)


def test_bad_keys_are_rejected_before_any_request(dcore_s3_storage: S3Storage) -> None:
    calls = count_calls(dcore_s3_storage)
    for key in ["../x", "/abs", "a\x00b", ""]:
        with pytest.raises(InvalidKeyError):
            dcore_s3_storage.put(key, b"v")
    assert calls == Counter()


def test_the_bucket_is_checked_once(dcore_s3_endpoint: S3Endpoint, dcore_s3_bucket: str) -> None:
    storage = make(dcore_s3_endpoint, dcore_s3_bucket)
    calls = count_calls(storage)
    storage.put("a", b"1")
    storage.put("b", b"2")
    assert storage.get("a") == b"1"
    assert calls == Counter(HeadBucket=1, PutObject=2, GetObject=1)


# -- multipart and checksums ----------------------------------------------------------------

SMALL_PARTS: dict[str, Any] = {"multipart_threshold": 5 * MiB, "multipart_chunk_size": 5 * MiB}


def test_a_stream_below_the_threshold_is_one_put_with_its_checksum(
    dcore_s3_endpoint: S3Endpoint, dcore_s3_bucket: str
) -> None:
    storage = make(dcore_s3_endpoint, dcore_s3_bucket, **SMALL_PARTS)
    calls = count_calls(storage)
    info = storage.put_stream("small", chunks_of(3 * MiB))
    assert info.sha256 == sha_of(3 * MiB)
    assert calls["PutObject"] == 1
    assert calls["CreateMultipartUpload"] == 0
    head = endpoint_client(dcore_s3_endpoint).head_object(Bucket=dcore_s3_bucket, Key="small")
    assert head["Metadata"] == {"sha256": info.sha256}


def test_a_stream_above_the_threshold_is_a_multipart_upload_with_its_checksum(
    dcore_s3_endpoint: S3Endpoint, dcore_s3_bucket: str
) -> None:
    size = 11 * MiB + 3
    storage = make(dcore_s3_endpoint, dcore_s3_bucket, **SMALL_PARTS)
    calls = count_calls(storage)
    info = storage.put_stream("big", chunks_of(size))
    assert (info.size, info.sha256) == (size, sha_of(size))
    assert calls["CreateMultipartUpload"] == 1
    assert calls["UploadPart"] == 3  # 5 MiB + 5 MiB + the rest
    assert calls["CompleteMultipartUpload"] == 1
    assert calls["PutObject"] == 0
    head = endpoint_client(dcore_s3_endpoint).head_object(Bucket=dcore_s3_bucket, Key="big")
    assert head["Metadata"] == {"sha256": info.sha256}
    assert head["ContentLength"] == size
    assert storage.info("big") == info
    digest = hashlib.sha256()
    for chunk in storage.get_stream("big", chunk_size=MiB):
        assert len(chunk) <= MiB
        digest.update(chunk)
    assert digest.hexdigest() == info.sha256
    assert pending_uploads(dcore_s3_endpoint, dcore_s3_bucket) == []


def test_objects_too_big_for_one_copy_get_their_checksum_by_multipart_copy(
    dcore_s3_endpoint: S3Endpoint, dcore_s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(s3_module, "_SINGLE_COPY_LIMIT", 5 * MiB)
    size = 11 * MiB
    storage = make(dcore_s3_endpoint, dcore_s3_bucket, **SMALL_PARTS)
    calls = count_calls(storage)
    info = storage.put_stream("huge", chunks_of(size))
    assert calls["CopyObject"] == 0
    assert calls["UploadPartCopy"] >= 2
    head = endpoint_client(dcore_s3_endpoint).head_object(Bucket=dcore_s3_bucket, Key="huge")
    assert head["Metadata"] == {"sha256": sha_of(size)} == {"sha256": info.sha256}
    assert storage.get("huge") == b"".join(chunks_of(size))


def test_a_failing_stream_aborts_the_multipart_upload_and_leaves_nothing(
    dcore_s3_endpoint: S3Endpoint, dcore_s3_bucket: str
) -> None:
    storage = make(dcore_s3_endpoint, dcore_s3_bucket, **SMALL_PARTS)
    calls = count_calls(storage)

    def failing() -> Iterator[bytes]:
        yield from chunks_of(12 * MiB)  # two parts go up before the failure
        raise RuntimeError("source broke")

    with pytest.raises(RuntimeError, match="source broke"):
        storage.put_stream("partial", failing())
    assert calls["UploadPart"] == 2
    assert calls["AbortMultipartUpload"] == 1
    assert not storage.exists("partial")
    assert list(storage.list()) == []
    assert pending_uploads(dcore_s3_endpoint, dcore_s3_bucket) == []


def test_a_failing_part_upload_aborts_too(
    dcore_s3_endpoint: S3Endpoint, dcore_s3_bucket: str
) -> None:
    storage = make(dcore_s3_endpoint, dcore_s3_bucket, **SMALL_PARTS)
    calls = count_calls(storage)

    def fail_second_part(params: dict[str, Any], **_: Any) -> None:
        if params.get("PartNumber") == 2:
            raise OSError("network went away mid-upload")

    storage.client.meta.events.register("before-parameter-build.s3.UploadPart", fail_second_part)
    with pytest.raises(OSError, match="mid-upload"):
        storage.put_stream("partial", chunks_of(12 * MiB))
    assert calls["AbortMultipartUpload"] == 1
    assert not storage.exists("partial")
    assert pending_uploads(dcore_s3_endpoint, dcore_s3_bucket) == []


def test_if_the_checksum_cannot_be_attached_the_object_is_removed(
    dcore_s3_endpoint: S3Endpoint, dcore_s3_bucket: str
) -> None:
    storage = make(dcore_s3_endpoint, dcore_s3_bucket, **SMALL_PARTS)

    def fail_copy(**_: Any) -> None:
        raise OSError("copy failed")

    storage.client.meta.events.register("before-parameter-build.s3.CopyObject", fail_copy)
    with pytest.raises(OSError, match="copy failed"):
        storage.put_stream("big", chunks_of(6 * MiB))
    assert not storage.exists("big")
    assert pending_uploads(dcore_s3_endpoint, dcore_s3_bucket) == []


# -- parts in flight ------------------------------------------------------------------------


class PartTracker:
    """Follows UploadPart requests through the storage's client hooks: how many are in
    flight at once, and how many were in flight when AbortMultipartUpload went out."""

    def __init__(self, storage: S3Storage) -> None:
        self.lock = threading.Lock()
        self.in_flight = 0
        self.most_in_flight = 0
        self.in_flight_at_abort: int | None = None
        events = storage.client.meta.events
        events.register("before-call.s3.UploadPart", self._started)
        events.register("after-call.s3.UploadPart", self._ended)
        events.register("after-call-error.s3.UploadPart", self._ended)
        events.register("before-call.s3.AbortMultipartUpload", self._abort)

    def _started(self, **_: Any) -> None:
        with self.lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)

    def _ended(self, **_: Any) -> None:
        with self.lock:
            self.in_flight -= 1

    def _abort(self, **_: Any) -> None:
        with self.lock:
            self.in_flight_at_abort = self.in_flight


def test_parts_are_sent_concurrently_but_never_more_than_max_concurrency(
    dcore_s3_endpoint: S3Endpoint, dcore_s3_bucket: str
) -> None:
    storage = make(dcore_s3_endpoint, dcore_s3_bucket, max_concurrency=2, **SMALL_PARTS)
    tracker = PartTracker(storage)
    together = threading.Barrier(2, timeout=10)  # the first two parts must overlap

    def meet(params: dict[str, Any], **_: Any) -> None:
        if params["PartNumber"] <= 2:
            together.wait()

    storage.client.meta.events.register("before-parameter-build.s3.UploadPart", meet)
    info = storage.put_stream("big", chunks_of(26 * MiB))
    assert info.sha256 == sha_of(26 * MiB)
    assert tracker.most_in_flight == 2
    assert storage.get("big") == b"".join(chunks_of(26 * MiB))


def test_a_failing_part_among_concurrent_ones_aborts_once_the_others_have_ended(
    dcore_s3_endpoint: S3Endpoint, dcore_s3_bucket: str
) -> None:
    storage = make(dcore_s3_endpoint, dcore_s3_bucket, max_concurrency=4, **SMALL_PARTS)
    tracker = PartTracker(storage)
    calls = count_calls(storage)
    part_three_failed = threading.Event()

    def fail_third_part(params: dict[str, Any], **_: Any) -> None:
        if params["PartNumber"] == 3:
            part_three_failed.set()
            raise OSError("network went away mid-upload")
        if params["PartNumber"] in (1, 2):  # still sending while part 3 fails
            assert part_three_failed.wait(10)

    storage.client.meta.events.register("before-parameter-build.s3.UploadPart", fail_third_part)
    with pytest.raises(OSError, match="mid-upload"):
        storage.put_stream("partial", chunks_of(30 * MiB))
    assert calls["AbortMultipartUpload"] == 1
    assert calls["CompleteMultipartUpload"] == 0
    assert tracker.in_flight_at_abort == 0
    assert not storage.exists("partial")
    assert pending_uploads(dcore_s3_endpoint, dcore_s3_bucket) == []


def test_a_stream_is_read_only_as_fast_as_parts_are_sent(
    dcore_s3_endpoint: S3Endpoint, dcore_s3_bucket: str
) -> None:
    """Bounded memory: the source is asked for a part only when fewer than
    ``max_concurrency`` are unfinished."""
    storage = make(dcore_s3_endpoint, dcore_s3_bucket, max_concurrency=2, **SMALL_PARTS)
    tracker = PartTracker(storage)
    finished = Counter[str]()
    storage.client.meta.events.register(
        "after-call.s3.UploadPart", lambda **_: finished.update(["part"])
    )
    unfinished_when_read: list[int] = []

    def source() -> Iterator[bytes]:
        for number, chunk in enumerate(chunks_of(40 * MiB, 5 * MiB)):
            with tracker.lock:
                unfinished_when_read.append(number - finished["part"])
            yield chunk

    storage.put_stream("big", source())
    assert len(unfinished_when_read) == 8
    assert max(unfinished_when_read) <= 2
    assert tracker.most_in_flight == 2


MEMORY_PROBE = """
import json, os, sys, tracemalloc
from dcore.backends.s3 import S3Storage
url, region, bucket = sys.argv[1:4]
storage = S3Storage(endpoint_url=url, region=region, access_key=os.environ["PROBE_ACCESS_KEY"],
                    secret_key=os.environ["PROBE_SECRET_KEY"], bucket=bucket,
                    max_concurrency=2, multipart_threshold=5 << 20,
                    multipart_chunk_size=5 << 20)
block = bytes(range(256)) * 4096  # 1 MiB

def chunks():
    for _ in range(60):
        yield block

tracemalloc.start()
info = storage.put_stream("big", chunks())
print(json.dumps({"size": info.size, "peak": tracemalloc.get_traced_memory()[1]}))
"""


def test_streaming_holds_a_few_parts_in_memory_not_the_object(
    dcore_s3_endpoint: S3Endpoint, dcore_s3_bucket: str
) -> None:
    """Measured in a client process of its own: an in-process moto server keeps the
    object in this one."""
    credentials = {
        "PROBE_ACCESS_KEY": dcore_s3_endpoint.access_key,
        "PROBE_SECRET_KEY": dcore_s3_endpoint.secret_key,  # not on a command line
    }
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            MEMORY_PROBE,
            dcore_s3_endpoint.url,
            dcore_s3_endpoint.region,
            dcore_s3_bucket,
        ],
        env={**os.environ, **credentials},
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    )
    probe = json.loads(done.stdout)
    assert probe["size"] == 60 * MiB
    # two parts sending, one being filled, plus botocore's buffers: not the 60 MiB object
    assert probe["peak"] < 25 * MiB, f"peak {probe['peak'] / MiB:.1f} MiB"


# -- seekable files: hashed first, no copy afterwards -----------------------------------------


def crc_header(data: bytes) -> str:
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


def capture_part_params(storage: S3Storage) -> list[dict[str, Any]]:
    """The parameters of every UploadPart call, with the body as bytes."""
    seen: list[dict[str, Any]] = []
    lock = threading.Lock()

    def hook(params: dict[str, Any], **_: Any) -> None:
        body = params["Body"]
        data = body.getvalue() if hasattr(body, "getvalue") else bytes(body)
        with lock:
            seen.append({**params, "Body": data})

    storage.client.meta.events.register("before-parameter-build.s3.UploadPart", hook)
    return seen


def test_a_seekable_file_is_uploaded_with_its_checksum_and_no_copy(
    dcore_s3_endpoint: S3Endpoint, dcore_s3_bucket: str, tmp_path: Path
) -> None:
    size = 11 * MiB + 5
    path = tmp_path / "upload.bin"
    path.write_bytes(b"".join(chunks_of(size)))
    storage = make(dcore_s3_endpoint, dcore_s3_bucket, **SMALL_PARTS)
    calls = count_calls(storage)
    parts = capture_part_params(storage)
    with path.open("rb") as source:
        info = storage.put_stream("from/file", source)
    assert (info.size, info.sha256) == (size, sha_of(size))
    assert calls["CreateMultipartUpload"] == 1
    assert calls["UploadPart"] == 3
    assert calls["CopyObject"] == calls["UploadPartCopy"] == 0
    head = endpoint_client(dcore_s3_endpoint).head_object(Bucket=dcore_s3_bucket, Key="from/file")
    assert head["Metadata"] == {"sha256": info.sha256}
    assert storage.get("from/file") == path.read_bytes()
    assert {p["ChecksumCRC32"] for p in parts} == {crc_header(p["Body"]) for p in parts}
    assert pending_uploads(dcore_s3_endpoint, dcore_s3_bucket) == []


def test_a_seekable_file_is_read_from_where_it_stands(
    dcore_s3_endpoint: S3Endpoint, dcore_s3_bucket: str
) -> None:
    data = b"".join(chunks_of(12 * MiB))
    source = io.BytesIO(data)
    source.seek(MiB)
    info = make(dcore_s3_endpoint, dcore_s3_bucket, **SMALL_PARTS).put_stream("tail", source)
    assert info.sha256 == hashlib.sha256(data[MiB:]).hexdigest()
    assert make(dcore_s3_endpoint, dcore_s3_bucket).get("tail") == data[MiB:]


def test_a_file_changed_between_hashing_and_sending_is_not_stored(
    dcore_s3_endpoint: S3Endpoint, dcore_s3_bucket: str
) -> None:
    """The first pass hashed other bytes than the second would send: the stored sha256
    would be wrong, so the upload is aborted."""
    source = io.BytesIO(b"".join(chunks_of(12 * MiB)))
    storage = make(dcore_s3_endpoint, dcore_s3_bucket, **SMALL_PARTS)
    calls = count_calls(storage)

    def writer_changes_the_file(**_: Any) -> None:
        with source.getbuffer() as view:
            view[7 * MiB] ^= 0xFF  # a byte in part 2

    storage.client.meta.events.register(
        "before-call.s3.CreateMultipartUpload", writer_changes_the_file
    )
    with pytest.raises(StorageError, match=r"'changing' changed while it was being uploaded"):
        storage.put_stream("changing", source)
    assert calls["AbortMultipartUpload"] == 1
    assert not storage.exists("changing")
    assert pending_uploads(dcore_s3_endpoint, dcore_s3_bucket) == []


def test_a_file_truncated_between_hashing_and_sending_is_not_stored(
    dcore_s3_endpoint: S3Endpoint, dcore_s3_bucket: str, tmp_path: Path
) -> None:
    path = tmp_path / "shrinking.bin"
    path.write_bytes(b"".join(chunks_of(12 * MiB)))
    storage = make(dcore_s3_endpoint, dcore_s3_bucket, **SMALL_PARTS)

    def writer_truncates_the_file(**_: Any) -> None:
        with path.open("r+b") as f:
            f.truncate(9 * MiB)

    storage.client.meta.events.register(
        "before-call.s3.CreateMultipartUpload", writer_truncates_the_file
    )
    with path.open("rb") as source, pytest.raises(StorageError, match=r"part 2 differs"):
        storage.put_stream("shrinking", source)
    assert not storage.exists("shrinking")
    assert pending_uploads(dcore_s3_endpoint, dcore_s3_bucket) == []


def test_a_stream_needing_more_than_max_parts_is_refused_and_aborted(
    dcore_s3_endpoint: S3Endpoint, dcore_s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(s3_module, "MAX_PARTS", 2)
    storage = make(dcore_s3_endpoint, dcore_s3_bucket, **SMALL_PARTS)
    calls = count_calls(storage)
    with pytest.raises(StorageError, match=r"more than 2 parts of 5242880 bytes.*chunk_size"):
        storage.put_stream("huge", chunks_of(12 * MiB))
    assert calls["UploadPart"] == 2
    assert calls["AbortMultipartUpload"] == 1
    assert pending_uploads(dcore_s3_endpoint, dcore_s3_bucket) == []


def test_a_file_needing_more_than_max_parts_is_refused_before_any_upload(
    dcore_s3_endpoint: S3Endpoint, dcore_s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(s3_module, "MAX_PARTS", 2)
    storage = make(dcore_s3_endpoint, dcore_s3_bucket, **SMALL_PARTS)
    calls = count_calls(storage)
    with pytest.raises(StorageError, match="more than 2 parts"):
        storage.put_stream("huge", io.BytesIO(b"".join(chunks_of(12 * MiB))))
    assert calls["CreateMultipartUpload"] == 0


@pytest.mark.parametrize("source_kind", ["stream", "file"])
def test_part_checksums_can_be_turned_off_for_servers_that_reject_them(
    dcore_s3_endpoint: S3Endpoint, dcore_s3_bucket: str, source_kind: str
) -> None:
    storage = make(dcore_s3_endpoint, dcore_s3_bucket, part_checksums=False, **SMALL_PARTS)
    created: list[dict[str, Any]] = []
    storage.client.meta.events.register(
        "before-parameter-build.s3.CreateMultipartUpload",
        lambda params, **_: created.append(dict(params)),
    )
    parts = capture_part_params(storage)
    data = b"".join(chunks_of(11 * MiB))
    source = io.BytesIO(data) if source_kind == "file" else chunks_of(11 * MiB)
    info = storage.put_stream("plain", source)
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert "ChecksumAlgorithm" not in created[0]
    assert len(parts) == 3
    assert not any("ChecksumCRC32" in p for p in parts)
    assert storage.get("plain") == data


def test_list_fetches_page_by_page(dcore_s3_endpoint: S3Endpoint, dcore_s3_bucket: str) -> None:
    storage = make(dcore_s3_endpoint, dcore_s3_bucket, page_size=2)
    for i in range(5):
        storage.put(f"k{i}", b"v")
    calls = count_calls(storage)
    listed = storage.list()
    assert calls["ListObjectsV2"] == 0  # lazy: nothing fetched until iterated
    assert next(listed).key == "k0"
    assert calls["ListObjectsV2"] == 1
    assert [i.key for i in listed] == ["k1", "k2", "k3", "k4"]
    assert calls["ListObjectsV2"] == 3


def test_list_skips_objects_with_keys_dcore_would_reject(
    dcore_s3_endpoint: S3Endpoint, dcore_s3_bucket: str, dcore_s3_storage: S3Storage
) -> None:
    client = endpoint_client(dcore_s3_endpoint)
    client.put_object(Bucket=dcore_s3_bucket, Key="a//b", Body=b"written by another tool")
    dcore_s3_storage.put("ok", b"v")
    assert [i.key for i in dcore_s3_storage.list()] == ["ok"]


# -- fake_s3 ----------------------------------------------------------------------------------


def test_fake_s3_is_isolated_from_and_does_not_wipe_the_moto_server(
    dcore_s3_storage: S3Storage, dcore_fake_s3: S3Storage
) -> None:
    dcore_s3_storage.put("server-object", b"on the server")
    dcore_fake_s3.put("fake-object", b"in the mock")
    assert dcore_fake_s3.endpoint.startswith("https://s3.")  # no endpoint: moto intercepts boto3
    assert [i.key for i in dcore_fake_s3.list()] == ["fake-object"]
    assert [i.key for i in dcore_s3_storage.list()] == ["server-object"]
    assert dcore_s3_storage.get("server-object") == b"on the server"


def test_fake_s3_deletes_its_buckets_afterwards(
    dcore_s3_endpoint: S3Endpoint, dcore_s3_storage: S3Storage
) -> None:
    if not dcore_s3_endpoint.in_process:
        pytest.skip("only an in-process moto server shares the mock's backends")
    dcore_s3_storage.put("survivor", b"v")
    with mock_s3_storage() as fake:
        fake.put("k", b"v")
        fake.client.create_bucket(Bucket="dcore-made-in-test")
        bucket = fake.bucket
    # moto's backends are process-wide, so the server shows what the mock left behind
    names = {b["Name"] for b in dcore_s3_storage.client.list_buckets()["Buckets"]}
    assert bucket not in names
    assert "dcore-made-in-test" not in names
    assert dcore_s3_storage.get("survivor") == b"v"
