"""S3 behind a faulty network: connection resets mid-multipart, and a thin pipe.

A reset in the middle of a multipart upload is the worst moment for object storage: some
parts are on the server, the object is not. Whatever retries or does not retry (botocore
itself, the stage's ``RetryPolicy``, nobody), the bucket must afterwards hold the whole
object with its sha256, or no object — never a partial one — and no multipart upload
left open to accumulate parts (and cost) for ever.

With one part sent at a time the reset hits exactly part 2, so the attempts can be
counted; with several parts in flight (the default) it resets every connection carrying
one, and the same invariant must hold.

A bandwidth toxic must slow an upload down without corrupting it: the bytes arrive
intact, and no sooner than the rate allows.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from dcore import (
    Environment,
    Execute,
    NextFn,
    PipelineContext,
    PluginRegistry,
    RetryPolicy,
    register_plugin,
    use_environment,
)
from dcore.backends.s3 import S3Storage
from dcore.errors import ObjectNotFoundError, ServiceUnavailableError
from dcore.services.storage import StorageInterface
from dcore_testing.chaos import Proxy
from dcore_testing.chaos.services import ChaosS3

pytestmark = pytest.mark.chaos

MiB = 1024 * 1024
PART = 5 * MiB  # S3's smallest part: three parts for the object below
SIZE = 12 * MiB
RESET_AT_PART = 2
#: one part at a time (counts exact), or several in flight as by default
CONCURRENCY = pytest.mark.parametrize("concurrency", [1, 4], ids=["one_part", "parts_in_flight"])


def payload(size: int, seed: int = 6) -> bytes:
    return random.Random(seed).randbytes(size)


def chunks(data: bytes, size: int = MiB) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


class ResetDuringPart:
    """Resets the connection carrying UploadPart ``part`` (a ``reset_peer`` toxic added
    just before that request goes out) and lifts the fault as soon as the request fails:
    a transient network blip at the worst moment, at the same moment every run.

    Hooks the storage's boto3 client; counts multipart uploads started, failures seen and
    attempts per part. The hooks run on every thread sending a part, hence the lock (held
    while the toxic is removed, so no retry goes out before it is gone)."""

    def __init__(self, storage: S3Storage, proxy: Proxy, part: int) -> None:
        self.lock = threading.Lock()
        self.proxy = proxy
        self.part = part
        self.toxic: str | None = None
        self.fired = 0
        self.failures = 0
        self.uploads_started = 0
        self.part_attempts: dict[int, int] = {}
        events = storage.client.meta.events
        events.register("before-send.s3.UploadPart", self._before_part)
        events.register("before-send.s3.CreateMultipartUpload", self._before_create)
        events.register("needs-retry.s3.UploadPart", self._after_part)

    def _before_create(self, **kwargs: Any) -> None:
        with self.lock:
            self.uploads_started += 1

    def _before_part(self, request: Any, **kwargs: Any) -> None:
        number = int(parse_qs(urlsplit(request.url).query)["partNumber"][0])
        with self.lock:
            self.part_attempts[number] = self.part_attempts.get(number, 0) + 1
            if number == self.part and not self.fired:
                self.fired += 1
                self.toxic = self.proxy.add_toxic("reset_peer", stream="upstream", timeout=0).name

    def _after_part(self, caught_exception: BaseException | None = None, **kwargs: Any) -> None:
        if caught_exception is None:
            return
        with self.lock:
            self.failures += 1
            if self.toxic is not None:
                self.proxy.remove_toxic(self.toxic)
                self.toxic = None


def assert_complete_or_absent(chaos_s3: ChaosS3, key: str, data: bytes) -> bool:
    """The object is all of ``data`` with its sha256, or it is not there; no multipart
    upload is left open. Returns True if the object is there."""
    try:
        info = chaos_s3.direct.info(key)
    except ObjectNotFoundError:
        present = False
    else:
        present = True
        stored = chaos_s3.direct.get(key)
        expected = hashlib.sha256(data).hexdigest()
        assert info.size == len(data), f"partial object: {info.size} of {len(data)} bytes"
        assert hashlib.sha256(stored).hexdigest() == expected, "stored bytes differ"
        assert info.sha256 == expected, "the sha256 metadata does not match the content"
    assert chaos_s3.multipart_uploads() == [], "a multipart upload was left open"
    return present


@CONCURRENCY
def test_reset_during_multipart_upload_is_retried_by_botocore_and_the_object_is_whole(
    dcore_chaos_s3: ChaosS3, concurrency: int
) -> None:
    """Invariant: a connection reset during part 2 of a multipart ``put_stream`` is
    retried by botocore (standard mode, 3 attempts); the object ends complete with a
    matching sha256 and no multipart upload is left open. With parts in flight the
    reset may hit any of them (not always part 2); each one hit is retried once."""
    storage = dcore_chaos_s3.make_storage(
        multipart_threshold=PART,
        multipart_chunk_size=PART,
        max_attempts=3,
        max_concurrency=concurrency,
    )
    fault = ResetDuringPart(storage, dcore_chaos_s3.proxy, RESET_AT_PART)
    data = payload(SIZE)

    info = storage.put_stream("big/blob.bin", chunks(data))

    if concurrency == 1:
        assert (fault.fired, fault.failures) == (1, 1)
        assert fault.part_attempts == {1: 1, 2: 2, 3: 1}
    else:
        assert fault.fired == 1
        assert 1 <= fault.failures <= 3
        assert set(fault.part_attempts) == {1, 2, 3}
        # every failed attempt was retried once, and no retry failed
        assert sum(fault.part_attempts.values()) == 3 + fault.failures
        assert all(1 <= attempts <= 2 for attempts in fault.part_attempts.values())
    assert fault.uploads_started == 1
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert assert_complete_or_absent(dcore_chaos_s3, "big/blob.bin", data)


class StreamUpload(PipelineContext):
    key: str
    path: str


def uploaded(ctx: StreamUpload) -> str:
    return ctx.key


@pytest.fixture
def stream_write_stage(dcore_registry: PluginRegistry) -> str:
    """An Execute stage that streams a file into storage (``put_stream``), registered in
    this test's registry only."""

    @register_plugin("chaos_stream_write", registry=dcore_registry)
    class StreamWrite(Execute[Any]):
        def __init__(self, storage: StorageInterface) -> None:
            self.storage = storage

        def execute(self, next_fn: NextFn[Any], context: Any) -> Any:
            with Path(context.path).open("rb") as source:
                self.storage.put_stream(context.key, source)
            return next_fn(context)

    return "chaos_stream_write"


@CONCURRENCY
@pytest.mark.parametrize("retry", [True, False], ids=["stage_retry", "no_retry"])
def test_reset_during_multipart_upload_leaves_the_object_whole_or_absent_never_partial(
    dcore_chaos_s3: ChaosS3,
    stream_write_stage: str,
    dcore_registry: PluginRegistry,
    tmp_path: Path,
    retry: bool,
    concurrency: int,
) -> None:
    """Invariant: with botocore's retries off, a reset during part 2 fails the upload;
    dcore aborts that multipart upload (after every part in flight has ended). With the
    stage's ``RetryPolicy`` the stage runs again and the object ends complete (sha256
    matches); without one the error reaches the caller and the object is absent. Either
    way: never partial, no upload left open."""
    storage = dcore_chaos_s3.make_storage(
        multipart_threshold=PART,
        multipart_chunk_size=PART,
        max_attempts=1,
        max_concurrency=concurrency,
    )
    fault = ResetDuringPart(storage, dcore_chaos_s3.proxy, RESET_AT_PART)
    data = payload(SIZE, seed=7)
    source = tmp_path / "upload.bin"
    source.write_bytes(data)
    policy = RetryPolicy(attempts=3, initial=0.05, retry_on=ServiceUnavailableError)

    env = Environment(storage=storage, registry=dcore_registry)
    with use_environment(env):
        pipeline = StreamUpload(key="big/stage.bin", path=str(source)).create_pipeline(
            core_fn=uploaded
        )
        pipeline.chain(Execute, plugin=stream_write_stage, retry=policy if retry else None)
        if retry:
            assert pipeline.run() == "big/stage.bin"
        else:
            with pytest.raises(ServiceUnavailableError, match="unreachable"):
                pipeline.run()

    assert fault.fired == 1
    if concurrency == 1:
        assert fault.failures == 1
    else:
        assert 1 <= fault.failures <= 3
    assert fault.uploads_started == (2 if retry else 1)
    present = assert_complete_or_absent(dcore_chaos_s3, "big/stage.bin", data)
    assert present is retry


BANDWIDTH_KBPS = 500
UPLOAD_BYTES = 600_000
#: asyncio timers may wake a hair early; allow 2 % below the exact size / rate
TIMER_SLACK = 0.98


def test_upload_through_a_500_kbps_pipe_is_intact_and_no_faster_than_the_rate(
    dcore_chaos_s3: ChaosS3,
) -> None:
    """Invariant: a ``put`` through a 500 KB/s bandwidth toxic (client → server) stores
    exactly the bytes sent, with their sha256, and takes at least size / rate: the toxic
    really throttles our client's traffic, and throttling corrupts nothing."""
    data = payload(UPLOAD_BYTES, seed=8)
    dcore_chaos_s3.storage.put("warm/up.txt", b"connection and bucket check before timing")
    with dcore_chaos_s3.proxy.bandwidth(BANDWIDTH_KBPS, stream="upstream"):
        start = time.monotonic()
        info = dcore_chaos_s3.storage.put("slow/upload.bin", data)
        elapsed = time.monotonic() - start

    floor = UPLOAD_BYTES / (BANDWIDTH_KBPS * 1000)
    assert elapsed >= floor * TIMER_SLACK, f"{elapsed:.2f}s < {floor:.2f}s at {BANDWIDTH_KBPS} KB/s"
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert assert_complete_or_absent(dcore_chaos_s3, "slow/upload.bin", data)
