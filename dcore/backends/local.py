"""Object storage in a directory: the embedded default (``DCORE_STORAGE=local``).

A key ``uploads/a.txt`` is the file ``<root>/uploads/a.txt``. Two guards keep every
write inside ``root``: the shared key rules (no ``..``, no absolute keys, no NUL), and,
after joining, a check that the resolved path is still inside the root, which catches a
symlink planted in the tree. Writes go to a temporary file in the target's directory and
are renamed into place with ``os.replace``, so readers see the old or the new object and
a failed write leaves nothing behind.

Unlike S3, a filesystem cannot hold both ``a`` and ``a/b``; such a put is a
``StorageError`` naming the conflict.

Fenced writes (``put_fenced``) hold across the processes and threads of **one host**:
each key's check, fence record and object write run under an exclusive ``flock`` on the
file ``<root>/.dcore-tmp-fences/<sha256 of key>.lock``, which the kernel releases when
its holder dies, so a crashed writer never blocks the key. The record (beside the lock
file) is written and made durable before the object, so a crash between the two leaves
the newer fence recorded over the older object, never the reverse (with ``fsync=False``
that order survives a process crash but not a power cut). A network filesystem may not
honour ``flock`` between hosts: there, use the S3 backend.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from dcore._plugins.registry import default_registry, register_plugin
from dcore.backends._fences import decode_record, encode_record, must_record, record_key
from dcore.backends._keys import (
    RESERVED_PREFIX,
    as_bytes,
    iter_source,
    validate_key,
    validate_prefix,
)
from dcore.errors import InvalidKeyError, ObjectNotFoundError, StorageError
from dcore.services.fencing import Fence, check_fence
from dcore.services.storage import ObjectInfo, StorageInterface

if TYPE_CHECKING:
    from dcore._core.environment import Environment

__all__ = ["LocalFileStorage"]

_READ_SIZE = 1024 * 1024


@register_plugin("local", registry=default_registry())
@register_plugin("local_file_storage", registry=default_registry())
class LocalFileStorage(StorageInterface):
    """Files under ``root`` (created on first write). ``fsync`` makes a returned put
    durable across a power cut, at the cost of a disk flush per write."""

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self._root = Path(root).resolve()
        self._fsync = fsync

    @classmethod
    def from_environment(cls, env: Environment, **options: Any) -> LocalFileStorage:
        return cls(root=env.settings.storage_root, **options)

    @property
    def root(self) -> Path:
        return self._root

    # -- writing --------------------------------------------------------------------
    def put(self, key: str, data: bytes) -> ObjectInfo:
        path = self._path(key)
        return self._write(key, path, iter((as_bytes(data, "put() data"),)))

    def put_stream(self, key: str, chunks: Iterable[bytes] | BinaryIO) -> ObjectInfo:
        path = self._path(key)
        return self._write(key, path, iter_source(chunks, _READ_SIZE))

    def _write(self, key: str, path: Path, chunks: Iterator[bytes]) -> ObjectInfo:
        created = self._make_parents(key, path.parent)
        digest = hashlib.sha256()
        size = 0
        fd, tmp = self._mkstemp(key, path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    f.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                f.flush()
                if self._fsync:
                    os.fsync(f.fileno())
            try:
                os.replace(tmp, path)
            except IsADirectoryError:
                raise self._conflict(key, path) from None
        except BaseException:
            with suppress(FileNotFoundError):
                os.unlink(tmp)
            if created:
                self._prune(path.parent)
            raise
        if self._fsync:
            _fsync_dir(path.parent)
        return ObjectInfo(key=key, size=size, sha256=digest.hexdigest())

    def _make_parents(self, key: str, parent: Path) -> bool:
        """Create the key's directories; True if any was created (to prune on failure)."""
        if parent.is_dir():
            return False
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise self._conflict(key, parent) from None
        return True

    def _mkstemp(self, key: str, parent: Path) -> tuple[int, str]:
        # A concurrent delete may prune the (then empty) directory between mkdir and
        # mkstemp; recreate it and try again rather than fail a valid write.
        for _ in range(3):
            try:
                return tempfile.mkstemp(prefix=RESERVED_PREFIX, dir=parent)
            except FileNotFoundError:
                self._make_parents(key, parent)
        return tempfile.mkstemp(prefix=RESERVED_PREFIX, dir=parent)

    def _conflict(self, key: str, path: Path) -> StorageError:
        return StorageError(
            f"cannot store key {key!r}: {path} is in the way (a file where a directory is "
            "needed, or the reverse). Local storage keeps keys as files, so 'a' and 'a/b' "
            "cannot both exist; delete one or choose another key"
        )

    # -- fenced writes --------------------------------------------------------------
    def put_fenced(self, key: str, data: bytes, fence: Fence | None) -> ObjectInfo:
        path = self._path(key)
        fence = check_fence(fence, f"put_fenced({key!r})")
        blob = as_bytes(data, "put_fenced() data")
        record, where = self._record(key)
        with self._locked(record):
            if must_record(key, fence, self._read_record(key, record)):
                self._write(where, record, iter((encode_record(key, fence),)))
            return self._write(key, path, iter((blob,)))

    def fence_of(self, key: str) -> Fence | None:
        self._path(key)  # the key rules, before any I/O
        return self._read_record(key, self._record(key)[0])

    def _record(self, key: str) -> tuple[Path, str]:
        where = record_key(key)
        path = self._root.joinpath(*where.split("/"))
        self._check_inside(where, path)
        return path, where

    def _read_record(self, key: str, record: Path) -> Fence | None:
        try:
            return decode_record(key, record.read_bytes(), str(record))
        except FileNotFoundError:
            return None

    @contextmanager
    def _locked(self, record: Path) -> Iterator[None]:
        """The key's exclusive flock, for the block: one fenced writer at a time on this
        host (threads included: each open() is its own lock owner)."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - POSIX only
            raise NotImplementedError(
                "fenced writes to local storage need POSIX flock (fcntl), missing on this "
                "platform; use the s3/minio storage"
            ) from None
        record.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(f"{record}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the flock

    # -- reading --------------------------------------------------------------------
    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise self._missing(key) from None

    def get_stream(self, key: str, chunk_size: int = _READ_SIZE) -> Iterator[bytes]:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
        path = self._path(key)
        if not path.is_file():  # eager, so a missing key raises at the call
            raise self._missing(key)
        return self._read(key, path, chunk_size)

    def _read(self, key: str, path: Path, chunk_size: int) -> Iterator[bytes]:
        try:
            f = path.open("rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise self._missing(key) from None
        with f:
            while chunk := f.read(chunk_size):
                yield chunk

    def info(self, key: str) -> ObjectInfo:
        """Size and sha256 of one object (reads it; not in the interface yet)."""
        digest = hashlib.sha256()
        size = 0
        for chunk in self.get_stream(key):
            digest.update(chunk)
            size += len(chunk)
        return ObjectInfo(key=key, size=size, sha256=digest.hexdigest())

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> bool:
        path = self._path(key)
        if not path.is_file():
            return False
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        self._prune(path.parent)
        return True

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Regular files in key order; temp files and symlinks are not listed."""
        prefix = validate_prefix(prefix)
        directory, _, _ = prefix.rpartition("/")
        start = self._root.joinpath(*directory.split("/")) if directory else self._root
        self._check_inside(prefix, start)
        base = f"{directory}/" if directory else ""
        return self._walk(start, base, prefix)

    def _walk(self, directory: Path, base: str, prefix: str) -> Iterator[ObjectInfo]:
        try:
            with os.scandir(directory) as it:
                entries = list(it)
        except (FileNotFoundError, NotADirectoryError):
            return
        ordered: list[tuple[str, os.DirEntry[str], bool]] = []
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                ordered.append((entry.name + "/", entry, True))
            elif entry.is_file(follow_symlinks=False):
                ordered.append((entry.name, entry, False))
        # Sorting a directory as "name/" makes this depth-first walk yield keys in string
        # order ("a-b" < "a/x" < "a0"), which is S3's order, without collecting them all.
        for sort_name, entry, is_dir in sorted(ordered, key=lambda t: t[0]):
            key = base + sort_name
            if is_dir and entry.name.startswith(RESERVED_PREFIX):
                continue  # the fence records: no key lives below a reserved name
            if is_dir:
                if key.startswith(prefix) or prefix.startswith(key):
                    yield from self._walk(Path(entry.path), key, prefix)
            elif key.startswith(prefix) and _is_valid_key(key):  # skips temp files too
                with suppress(FileNotFoundError):  # deleted while listing
                    size = entry.stat(follow_symlinks=False).st_size
                    yield ObjectInfo(key=key, size=size, sha256=None)

    # -- paths ----------------------------------------------------------------------
    def _path(self, key: str) -> Path:
        """The file for ``key``, refused unless it resolves inside the root."""
        key = validate_key(key)
        path = self._root.joinpath(*key.split("/"))
        self._check_inside(key, path)
        return path

    def _check_inside(self, key: str, path: Path) -> None:
        resolved = path.resolve()
        if resolved != self._root and not resolved.is_relative_to(self._root):
            raise InvalidKeyError(
                f"invalid storage key {key!r}: it resolves to {resolved}, outside the storage "
                f"root {self._root} (a symlink in the tree points out of it)"
            )

    def _prune(self, directory: Path) -> None:
        """Remove now-empty directories up to the root, so deleted prefixes leave no trace."""
        while directory != self._root and directory.is_relative_to(self._root):
            try:
                directory.rmdir()
            except OSError:
                return
            directory = directory.parent

    def _missing(self, key: str) -> ObjectNotFoundError:
        return ObjectNotFoundError(f"no object under key {key!r} in local storage {self._root}")

    def __repr__(self) -> str:
        return f"LocalFileStorage(root={str(self._root)!r})"


def _is_valid_key(key: str) -> bool:
    try:
        validate_key(key)
    except InvalidKeyError:
        return False
    return True


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
