"""The fenced-write contract (``put_fenced`` / ``fence_of``), one suite for every backend.

Newer fence wins, a stale one is refused and writes nothing, an equal one writes again,
unfenced writes pass untouched and leave the key's fence in place; and two writers in
two processes (threads, for the process-local memory backend) racing on one key end with
the newest fence's data, no older fence landing after a newer one returned.

S3 runs on moto. moto checks a PutObject condition and then writes, with no lock
between (``moto/s3/responses.py``, ``put_object``), so two conditional writes racing on
one moto server can both pass; S3 and MinIO decide them atomically. The cross-process
race therefore runs on a moto server that serializes its requests, which is what S3
documents; with ``DCORE_S3_ENDPOINT`` (MinIO) it runs on the real server.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dcore.backends._fences import record_key
from dcore.backends.local import LocalFileStorage
from dcore.backends.memory_storage import MemoryStorage
from dcore.backends.s3 import S3Storage
from dcore.errors import InvalidKeyError, StaleFenceError, StorageError
from dcore.services.fencing import Fence
from dcore.services.storage import StorageInterface
from dcore_testing.fixtures.s3 import S3Endpoint

Storage = LocalFileStorage | MemoryStorage | S3Storage
KEY = "reports/daily.csv"
LOCK = "report:daily"
WRITER = Path(__file__).with_name("fenced_writer.py")
ROOT = Path(__file__).resolve().parents[2]


def fence(number: int, lock: str = LOCK) -> Fence:
    return Fence(lock, number)


@pytest.fixture(params=["local", "memory", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        return LocalFileStorage(root=tmp_path / "store")
    if request.param == "memory":
        return MemoryStorage()
    s3: S3Storage = request.getfixturevalue("dcore_s3_storage")
    return s3


def keys_of(storage: Storage) -> list[str]:
    return [info.key for info in storage.list()]


# -- the rule ---------------------------------------------------------------------------


def test_a_newer_fence_overwrites_and_is_recorded(storage: Storage) -> None:
    assert storage.fence_of(KEY) is None
    storage.put_fenced(KEY, b"first holder", fence(1))
    info = storage.put_fenced(KEY, b"second holder", fence(2))
    assert storage.get(KEY) == b"second holder"
    assert storage.info(KEY) == info
    assert storage.fence_of(KEY) == fence(2)


def test_a_stale_fence_is_refused_and_writes_nothing(storage: Storage) -> None:
    storage.put_fenced(KEY, b"newer holder", fence(5))
    with pytest.raises(StaleFenceError) as refused:
        storage.put_fenced(KEY, b"late write", fence(4))
    assert (refused.value.key, refused.value.fence, refused.value.latest) == (
        KEY,
        fence(4),
        fence(5),
    )
    message = str(refused.value)
    assert f"{KEY!r}" in message
    assert f"fence 4 of lock {LOCK!r}" in message
    assert "fence 5 of that lock already wrote it" in message
    assert isinstance(refused.value, StorageError)
    assert storage.get(KEY) == b"newer holder"
    assert storage.fence_of(KEY) == fence(5)


def test_an_equal_fence_is_the_same_holder_writing_again(storage: Storage) -> None:
    storage.put_fenced(KEY, b"draft", fence(3))
    storage.put_fenced(KEY, b"final", fence(3))
    assert storage.get(KEY) == b"final"
    assert storage.fence_of(KEY) == fence(3)


def test_a_fence_of_another_lock_is_refused_naming_both_locks(storage: Storage) -> None:
    storage.put_fenced(KEY, b"under the report lock", fence(7))
    with pytest.raises(StaleFenceError, match="last written under lock 'report:daily'"):
        storage.put_fenced(KEY, b"under another lock", Fence("other", 90))
    assert storage.get(KEY) == b"under the report lock"


def test_fences_are_per_key(storage: Storage) -> None:
    storage.put_fenced("a", b"a5", fence(5))
    storage.put_fenced("b", b"b1", fence(1))
    assert (storage.fence_of("a"), storage.fence_of("b")) == (fence(5), fence(1))
    assert keys_of(storage) == ["a", "b"]  # the fence records are never listed


def test_unfenced_writes_pass_and_leave_the_fence_in_place(storage: Storage) -> None:
    storage.put(KEY, b"before any lock")
    assert storage.fence_of(KEY) is None
    storage.put_fenced(KEY, b"holder 2", fence(2))
    storage.put(KEY, b"unfenced overwrite")  # not checked: an unfenced writer opted out
    assert storage.get(KEY) == b"unfenced overwrite"
    assert storage.fence_of(KEY) == fence(2)
    with pytest.raises(StaleFenceError):
        storage.put_fenced(KEY, b"late holder 1", fence(1))
    assert storage.get(KEY) == b"unfenced overwrite"
    assert keys_of(storage) == [KEY]


def test_a_deleted_key_keeps_its_fence_so_a_late_holder_cannot_recreate_it(
    storage: Storage,
) -> None:
    storage.put_fenced(KEY, b"holder 2", fence(2))
    assert storage.delete(KEY)
    with pytest.raises(StaleFenceError):
        storage.put_fenced(KEY, b"late holder 1", fence(1))
    assert not storage.exists(KEY)
    storage.put_fenced(KEY, b"holder 2 again", fence(2))
    assert storage.get(KEY) == b"holder 2 again"


@pytest.mark.parametrize(
    ("bad", "error", "words"),
    [
        (None, TypeError, ["needs the writer's fence, got None", "current_fence()"]),
        ("report:daily", TypeError, ["Fence(lock, number)", "str"]),
        (("report:daily", 0), ValueError, ["int >= 1", "0"]),
        (("report:daily", True), ValueError, ["int >= 1", "True"]),
        (("report:daily", "3"), ValueError, ["int >= 1", "'3'"]),
        (("", 3), ValueError, ["non-empty str", "''"]),
    ],
)
def test_a_bad_fence_is_refused_before_anything_is_written(
    storage: Storage, bad: Any, error: type[Exception], words: list[str]
) -> None:
    with pytest.raises(error) as refused:
        storage.put_fenced(KEY, b"data", bad)
    assert f"put_fenced({KEY!r})" in str(refused.value)
    for word in words:
        assert word in str(refused.value)
    assert keys_of(storage) == []
    assert storage.fence_of(KEY) is None


def test_a_pair_is_accepted_as_a_fence(storage: Storage) -> None:
    storage.put_fenced(KEY, b"data", (LOCK, 2))  # type: ignore[arg-type]
    assert storage.fence_of(KEY) == fence(2)


def test_bad_keys_and_data_are_refused_like_put(storage: Storage) -> None:
    with pytest.raises(InvalidKeyError, match=re.escape("'..'")):
        storage.put_fenced("a/../../etc", b"x", fence(1))
    with pytest.raises(InvalidKeyError, match="reserved"):
        storage.fence_of(record_key(KEY))
    with pytest.raises(TypeError, match="str"):
        storage.put_fenced(KEY, "text", fence(1))  # type: ignore[arg-type]
    assert keys_of(storage) == []


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(numbers=st.lists(st.integers(min_value=1, max_value=6), min_size=1, max_size=8))
def test_any_sequence_of_fenced_writes_keeps_the_newest_fence(
    storage: Storage, numbers: list[int]
) -> None:
    """Invariant: a write lands iff its fence is at least every fence before it; the key
    holds the last write that landed, and its recorded fence is the largest seen."""
    key = f"seq/{len(numbers)}-{'-'.join(map(str, numbers))}-{time.monotonic_ns()}"
    newest, stored = 0, None
    for i, number in enumerate(numbers):
        data = f"{number}:{i}".encode()
        if number >= newest:
            storage.put_fenced(key, data, fence(number))
            newest, stored = number, data
        else:
            with pytest.raises(StaleFenceError):
                storage.put_fenced(key, data, fence(number))
    assert storage.get(key) == stored
    assert storage.fence_of(key) == fence(newest)


# -- what outlives the storage object -----------------------------------------------------


@pytest.fixture(params=["local", "s3"])
def persistent(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Storage, Storage]:
    """Two storage objects on the same objects (a second process would build its own)."""
    if request.param == "local":
        return LocalFileStorage(tmp_path), LocalFileStorage(tmp_path)
    s3: S3Storage = request.getfixturevalue("dcore_s3_storage")
    return s3, S3Storage(bucket=s3.bucket, client=s3.client)


def test_the_fence_is_recorded_in_storage_not_in_the_object(
    persistent: tuple[Storage, Storage],
) -> None:
    first, second = persistent
    first.put_fenced(KEY, b"holder 2", fence(2))
    assert second.fence_of(KEY) == fence(2)
    with pytest.raises(StaleFenceError):
        second.put_fenced(KEY, b"late holder 1", fence(1))


def test_a_damaged_fence_record_refuses_fenced_writes_naming_it(
    persistent: tuple[Storage, Storage],
) -> None:
    first, _ = persistent
    first.put_fenced(KEY, b"holder 2", fence(2))
    if isinstance(first, LocalFileStorage):
        first.root.joinpath(*record_key(KEY).split("/")).write_bytes(b"{not json")
    else:
        assert isinstance(first, S3Storage)
        first.client.put_object(Bucket=first.bucket, Key=record_key(KEY), Body=b"{not json")
    with pytest.raises(StorageError, match="fence record of key 'reports/daily") as bad:
        first.put_fenced(KEY, b"holder 3", fence(3))
    assert "delete the record" in str(bad.value)
    assert first.get(KEY) == b"holder 2"


# -- local files: the flock and a crash between record and object ----------------------------

HOLD_THE_LOCK = """
import sys
from pathlib import Path
from dcore.backends.local import LocalFileStorage
storage = LocalFileStorage(Path(sys.argv[1]))
with storage._locked(storage._record(sys.argv[2])[0]):
    print("locked", flush=True)
    sys.stdin.readline()
"""


def test_a_writer_killed_while_holding_the_keys_flock_does_not_block_it(
    tmp_path: Path,
) -> None:
    storage = LocalFileStorage(tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_THE_LOCK, str(tmp_path), KEY],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        lock_file = f"{storage._record(KEY)[0]}.lock"
        fd = os.open(lock_file, os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):  # held by the other process
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            holder.kill()
            holder.wait(timeout=30)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the kernel released it
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
    finally:
        holder.kill()
        holder.wait()
        for stream in (holder.stdin, holder.stdout):
            if stream is not None:
                stream.close()
    storage.put_fenced(KEY, b"after the crash", fence(1))
    assert storage.get(KEY) == b"after the crash"


def test_a_write_that_fails_after_recording_its_fence_leaves_it_over_the_old_object(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The record is written first: a writer that dies between the two leaves the newer
    fence over the older object, which refuses older fences and lets it write again."""
    storage = LocalFileStorage(tmp_path)
    storage.put_fenced(KEY, b"holder 1", fence(1))
    write = LocalFileStorage._write

    def disk_full_for_the_object(self: LocalFileStorage, key: str, *args: Any) -> Any:
        if key == KEY:
            raise OSError(28, "No space left on device")
        return write(self, key, *args)

    monkeypatch.setattr(LocalFileStorage, "_write", disk_full_for_the_object)
    with pytest.raises(OSError, match="No space left"):
        storage.put_fenced(KEY, b"holder 2", fence(2))
    monkeypatch.undo()
    assert (storage.get(KEY), storage.fence_of(KEY)) == (b"holder 1", fence(2))
    with pytest.raises(StaleFenceError):
        storage.put_fenced(KEY, b"late holder 1", fence(1))
    storage.put_fenced(KEY, b"holder 2", fence(2))
    assert storage.get(KEY) == b"holder 2"


# -- racing writers -------------------------------------------------------------------------

Attempt = tuple[int, int, str]  # start ns, end ns, "ok" | "stale"


def check_race(storage: Storage, older: list[Attempt], newer: list[Attempt]) -> None:
    """Invariant of two writers, fence 1 (``older``) and fence 2 (``newer``): fence 2 is
    never refused and its last write is what the key holds; fence 1 stops at its first
    refusal; no fence-1 write that started after a fence-2 write returned landed."""
    assert [outcome for *_, outcome in newer] == ["ok"] * len(newer)
    outcomes = [outcome for *_, outcome in older]
    assert "stale" not in outcomes[:-1]
    first_newer_end = min(end for _, end, _ in newer)
    late = [start for start, _, outcome in older if outcome == "ok" and start > first_newer_end]
    assert late == [], "a stale fence's write landed after a newer fence had written"
    assert storage.get(KEY) == f"{LOCK}:2:{len(newer) - 1}".encode()
    assert storage.fence_of(KEY) == fence(2)


WRITES = 25


def write_in_thread(
    storage: Storage, number: int, start: threading.Barrier, attempts: list[Attempt]
) -> None:
    start.wait()
    for i in range(WRITES):
        begun = time.monotonic_ns()
        try:
            storage.put_fenced(KEY, f"{LOCK}:{number}:{i}".encode(), fence(number))
        except StaleFenceError:
            attempts.append((begun, time.monotonic_ns(), "stale"))
            return
        attempts.append((begun, time.monotonic_ns(), "ok"))


@pytest.mark.parametrize("backend", ["memory", "local"])
def test_two_threads_racing_end_with_the_newest_fence(backend: str, tmp_path: Path) -> None:
    """The memory backend's guarantee is within its process; local's holds between
    threads too (each flock is its own owner)."""
    storage: Storage = MemoryStorage() if backend == "memory" else LocalFileStorage(tmp_path)
    start = threading.Barrier(2)
    results: dict[int, list[Attempt]] = {1: [], 2: []}
    threads = [
        threading.Thread(target=write_in_thread, args=(storage, n, start, results[n]))
        for n in (1, 2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    check_race(storage, results[1], results[2])


@contextmanager
def serialized_moto_server() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 that handles one request at a time, so a condition
    and its write are one step as on S3. moto's backends are process-wide: it serves
    the same buckets as the session's moto server."""
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    class Quiet(MotoRequestHandler):
        def log_request(self, *args: Any) -> None:
            pass

    app = DomainDispatcherApplication(create_backend_app)
    one_at_a_time = threading.Lock()

    def serialized(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        with one_at_a_time:
            return list(app(environ, start_response))

    server = make_server("127.0.0.1", 0, serialized, threaded=True, request_handler=Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.shutdown()
        thread.join()


@pytest.fixture(scope="session")
def atomic_s3_url(dcore_s3_endpoint: S3Endpoint) -> Iterator[str]:
    """Where conditional writes are atomic: the real server, or a serialized moto."""
    if not dcore_s3_endpoint.in_process:
        yield dcore_s3_endpoint.url
        return
    with serialized_moto_server() as url:
        yield url


@pytest.fixture(params=["local", "s3"])
def shared(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[Storage, dict[str, Any]]]:
    """A storage in this process and the spec another process builds the same one from."""
    if request.param == "local":
        yield LocalFileStorage(tmp_path), {"kind": "local", "root": str(tmp_path)}
        return
    endpoint: S3Endpoint = request.getfixturevalue("dcore_s3_endpoint")
    spec = {
        "kind": "s3",
        "endpoint_url": request.getfixturevalue("atomic_s3_url"),
        "bucket": request.getfixturevalue("dcore_s3_bucket"),
        "region": endpoint.region,
        "access_key": endpoint.access_key,
        "secret_key": endpoint.secret_key,
    }
    storage = S3Storage(**{k: v for k, v in spec.items() if k != "kind"})
    yield storage, spec
    storage.close()


def start_writer(spec: dict[str, Any], number: int) -> subprocess.Popen[str]:
    args = {"storage": spec, "key": KEY, "lock": LOCK, "number": number, "writes": WRITES}
    writer = subprocess.Popen(
        [sys.executable, str(WRITER), json.dumps(args)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert writer.stdout is not None
    assert writer.stdout.readline().strip() == "ready"
    return writer


def test_two_processes_racing_end_with_the_newest_fence(
    shared: tuple[Storage, dict[str, Any]],
) -> None:
    storage, spec = shared
    writers = {number: start_writer(spec, number) for number in (1, 2)}
    for writer in writers.values():  # both are waiting: release them together
        assert writer.stdin is not None
        writer.stdin.write("go\n")
        writer.stdin.flush()
    results: dict[int, list[Attempt]] = {}
    for number, writer in writers.items():
        out, _ = writer.communicate(timeout=120)
        assert writer.returncode == 0
        results[number] = [(start, end, outcome) for start, end, outcome in json.loads(out)]
    check_race(storage, results[1], results[2])


def test_a_backend_without_fenced_writes_says_so_naming_itself() -> None:
    class PlainStorage(MemoryStorage):
        """A third-party backend written before fenced writes existed."""

    PlainStorage.put_fenced = StorageInterface.put_fenced  # type: ignore[method-assign]
    PlainStorage.fence_of = StorageInterface.fence_of  # type: ignore[method-assign]
    storage = PlainStorage()
    with pytest.raises(
        NotImplementedError,
        match="PlainStorage does not implement fenced "
        r"writes \(put_fenced\)",
    ):
        storage.put_fenced(KEY, b"data", fence(1))
    with pytest.raises(NotImplementedError, match=r"PlainStorage .* \(fence_of\)"):
        storage.fence_of(KEY)
    assert keys_of(storage) == []
