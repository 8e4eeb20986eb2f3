"""The storage contract: one suite, run identically against local files, memory and S3.

What passes here for the in-memory fake is what a test may rely on against S3 (the
fakeredis lesson: same suite for the fake and the real thing).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from dcore.backends.local import LocalFileStorage
from dcore.backends.memory_storage import MemoryStorage
from dcore.backends.s3 import S3Storage
from dcore.errors import InvalidKeyError, ObjectNotFoundError
from dcore.services.storage import ObjectInfo, StorageInterface

Storage = LocalFileStorage | MemoryStorage | S3Storage


@pytest.fixture(params=["local", "memory", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        return LocalFileStorage(root=tmp_path / "store")
    if request.param == "memory":
        return MemoryStorage()
    s3: S3Storage = request.getfixturevalue("dcore_s3_storage")
    # a tiny page, so every listing of more than three objects crosses pages
    return S3Storage(bucket=s3.bucket, client=s3.client, page_size=3)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def keys_of(storage: StorageInterface, prefix: str = "") -> list[str]:
    return [info.key for info in storage.list(prefix)]


def clear(storage: StorageInterface) -> None:
    for info in list(storage.list()):
        storage.delete(info.key)


# -- round trips ----------------------------------------------------------------------


def test_put_returns_info_and_get_returns_the_bytes(storage: Storage) -> None:
    info = storage.put("uploads/a.txt", b"hello")
    assert info == ObjectInfo(key="uploads/a.txt", size=5, sha256=sha(b"hello"))
    assert storage.get("uploads/a.txt") == b"hello"
    assert storage.info("uploads/a.txt") == info


def test_empty_object_round_trips(storage: Storage) -> None:
    assert storage.put("empty", b"").size == 0
    assert storage.get("empty") == b""
    assert b"".join(storage.get_stream("empty")) == b""
    assert storage.info("empty").sha256 == sha(b"")


def test_put_accepts_bytearray_and_refuses_text(storage: Storage) -> None:
    storage.put("k", bytearray(b"abc"))  # type: ignore[arg-type]
    assert storage.get("k") == b"abc"
    with pytest.raises(TypeError, match="str"):
        storage.put("text", "not bytes")  # type: ignore[arg-type]
    assert keys_of(storage) == ["k"]


def test_put_overwrites_the_previous_value(storage: Storage) -> None:
    storage.put("k", b"first version, longer")
    info = storage.put("k", b"second")
    assert storage.get("k") == b"second"
    assert storage.info("k") == info == ObjectInfo(key="k", size=6, sha256=sha(b"second"))
    assert keys_of(storage) == ["k"]


SEGMENT = st.text(alphabet="abcXYZ019-_. é", min_size=1, max_size=12).filter(
    lambda s: s not in {".", ".."} and not s.startswith(".dcore-tmp-")
)
SAFE_KEYS = st.lists(SEGMENT, min_size=1, max_size=3).map("/".join)
PER_EXAMPLE = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@PER_EXAMPLE
@given(key=SAFE_KEYS, data=st.binary(max_size=4096))
def test_any_safe_key_and_any_bytes_round_trip(storage: Storage, key: str, data: bytes) -> None:
    clear(storage)
    assert storage.put(key, data) == ObjectInfo(key=key, size=len(data), sha256=sha(data))
    assert storage.get(key) == data
    assert b"".join(storage.get_stream(key, chunk_size=1000)) == data
    assert keys_of(storage) == [key]


@PER_EXAMPLE
@given(keys=st.sets(SAFE_KEYS, max_size=8))
def test_list_returns_exactly_the_stored_keys_in_order(storage: Storage, keys: set[str]) -> None:
    # a filesystem cannot hold both "a" and "a/b" (see test_storage_local); S3 can
    assume(not any(b.startswith(a + "/") for a in keys for b in keys))
    clear(storage)
    for key in keys:
        storage.put(key, key.encode())
    listed = list(storage.list())
    assert [i.key for i in listed] == sorted(keys)
    assert [i.size for i in listed] == [len(k.encode()) for k in sorted(keys)]


# -- delete, exists, missing keys -------------------------------------------------------


def test_delete_is_idempotent_and_reports_whether_the_key_existed(storage: Storage) -> None:
    storage.put("k", b"v")
    assert storage.delete("k") is True
    assert storage.delete("k") is False
    assert storage.delete("never-stored") is False
    assert not storage.exists("k")
    assert keys_of(storage) == []


def test_exists_follows_put_and_delete(storage: Storage) -> None:
    assert not storage.exists("a/b")
    storage.put("a/b", b"v")
    assert storage.exists("a/b")
    assert not storage.exists("a")  # a prefix is not an object
    storage.delete("a/b")
    assert not storage.exists("a/b")


@pytest.mark.parametrize("op", ["get", "get_stream", "info"])
def test_missing_key_raises_object_not_found_naming_the_key(storage: Storage, op: str) -> None:
    storage.put("present", b"v")
    with pytest.raises(ObjectNotFoundError, match="'absent/key'") as caught:
        getattr(storage, op)("absent/key")  # get_stream raises at the call, not when read
    assert isinstance(caught.value, KeyError)


# -- listing ---------------------------------------------------------------------------


def test_list_filters_by_plain_string_prefix(storage: Storage) -> None:
    for key in ["uploads/a", "uploads/b", "uploads2/c", "up", "other/x"]:
        storage.put(key, b"v")
    assert keys_of(storage, "uploads/") == ["uploads/a", "uploads/b"]
    assert keys_of(storage, "uploads") == ["uploads/a", "uploads/b", "uploads2/c"]
    assert keys_of(storage, "up") == ["up", "uploads/a", "uploads/b", "uploads2/c"]
    assert keys_of(storage, "uploads/b") == ["uploads/b"]
    assert keys_of(storage, "nothing/") == []


def test_list_is_in_key_order_across_prefix_directories(storage: Storage) -> None:
    keys = ["a0", "a/x", "a-b", "b", "a/y/z", "A", "é"]
    for key in keys:
        storage.put(key, b"v")
    assert keys_of(storage) == ["A", "a-b", "a/x", "a/y/z", "a0", "b", "é"]


def test_list_returns_every_page(storage: Storage) -> None:
    keys = [f"batch/{i:02d}" for i in range(10)]  # 4 pages of 3 on S3
    for i, key in enumerate(keys):
        storage.put(key, b"x" * i)
    listed = list(storage.list("batch/"))
    assert [i.key for i in listed] == keys
    assert [i.size for i in listed] == list(range(10))
    assert all(i.sha256 in (None, sha(b"x" * i.size)) for i in listed)


def test_list_is_a_snapshot_safe_to_delete_while_iterating(storage: Storage) -> None:
    for i in range(7):
        storage.put(f"k{i}", b"v")
    for info in storage.list():
        storage.delete(info.key)
    assert keys_of(storage) == []


# -- streaming ---------------------------------------------------------------------------

STREAM = bytes(range(256)) * (12 * 1024) + b"tail"  # ~3 MB, not a multiple of any chunk


def chunked(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def test_streaming_put_and_get_round_trip_a_few_megabytes(storage: Storage) -> None:
    info = storage.put_stream("big/blob", chunked(STREAM, 64 * 1024))
    assert info == ObjectInfo(key="big/blob", size=len(STREAM), sha256=sha(STREAM))
    chunks = list(storage.get_stream("big/blob", chunk_size=256 * 1024))
    assert all(0 < len(c) <= 256 * 1024 for c in chunks)
    assert len(chunks) >= len(STREAM) // (256 * 1024)
    assert b"".join(chunks) == STREAM
    assert storage.info("big/blob").sha256 == sha(STREAM)


def test_put_stream_reads_a_binary_file_object(storage: Storage) -> None:
    info = storage.put_stream("from-file", io.BytesIO(STREAM))
    assert info.sha256 == sha(STREAM)
    assert storage.get("from-file") == STREAM


def test_a_failing_stream_keeps_the_old_value_and_stores_nothing_new(storage: Storage) -> None:
    storage.put("kept", b"old")

    def failing() -> Iterator[bytes]:
        yield b"partial data"
        raise RuntimeError("source broke")

    with pytest.raises(RuntimeError, match="source broke"):
        storage.put_stream("kept", failing())
    with pytest.raises(RuntimeError, match="source broke"):
        storage.put_stream("new/key", failing())
    assert storage.get("kept") == b"old"
    assert keys_of(storage) == ["kept"]


# -- key validation ----------------------------------------------------------------------

BAD_KEYS = [
    ("", "empty"),
    ("/etc/passwd", "absolute"),
    ("C:/windows", "absolute"),
    ("../x", "'..'"),
    ("uploads/../../x", "'..'"),
    ("a/../b", "'..'"),
    ("..", "'..'"),
    ("a/..", "'..'"),
    ("a\x00b", "NUL"),
    ("a\nb", "control character"),
    ("a\\b", "backslash"),
    ("./a", "'.'"),
    ("a//b", "empty segment"),
    ("a/", "empty segment"),
    ("\ud800", "Unicode"),
    ("x" * 1025, "limit"),
    ("s" * 256, "segment longer"),
    ("d/.dcore-tmp-x", "reserved"),
    (b"bytes-key", "must be a str"),
]


@pytest.mark.parametrize(("key", "rule"), BAD_KEYS, ids=[repr(k)[:24] for k, _ in BAD_KEYS])
def test_every_bad_key_is_rejected_by_every_operation_and_nothing_is_stored(
    storage: Storage, key: str, rule: str
) -> None:
    started = []

    def source() -> Iterator[bytes]:
        started.append(True)
        yield b"data"

    operations = {
        "put": lambda: storage.put(key, b"data"),
        "put_stream": lambda: storage.put_stream(key, source()),
        "get": lambda: storage.get(key),
        "get_stream": lambda: storage.get_stream(key),
        "info": lambda: storage.info(key),
        "exists": lambda: storage.exists(key),
        "delete": lambda: storage.delete(key),
    }
    for name, call in operations.items():
        with pytest.raises(InvalidKeyError) as caught:
            call()
        message = str(caught.value)
        assert repr(key)[:40] in message, (name, message)
        assert rule in message, (name, message)
        assert isinstance(caught.value, ValueError)
    assert started == []  # rejected before reading the stream
    assert keys_of(storage) == []


@pytest.mark.parametrize("prefix", ["../", "/etc", "a/../..", "a\x00", "a\\b", 7])
def test_list_rejects_a_prefix_that_could_escape(storage: Storage, prefix: str) -> None:
    with pytest.raises(InvalidKeyError):
        storage.list(prefix)  # raises at the call, before any listing
