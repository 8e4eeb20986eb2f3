"""What only the local backend has: files on disk, symlinks, temp files, directories."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dcore._core.environment import Environment
from dcore._core.settings import DcoreSettings
from dcore._plugins.registry import default_registry
from dcore.backends._keys import RESERVED_PREFIX
from dcore.backends.local import LocalFileStorage
from dcore.errors import InvalidKeyError, StorageError
from dcore.services.storage import StorageInterface


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "root"


@pytest.fixture
def storage(root: Path) -> LocalFileStorage:
    return LocalFileStorage(root=root)


def tree(path: Path) -> dict[str, bytes | None]:
    """Every entry under ``path``: file contents, None for directories and links."""
    out: dict[str, bytes | None] = {}
    for p in sorted(path.rglob("*")):
        rel = str(p.relative_to(path))
        out[rel] = p.read_bytes() if p.is_file() and not p.is_symlink() else None
    return out


def test_registered_as_local_and_local_file_storage() -> None:
    for name in ("local", "local_file_storage"):
        assert default_registry().get(StorageInterface, name) is LocalFileStorage


def test_environment_builds_it_on_the_configured_root(tmp_path: Path) -> None:
    env = Environment(DcoreSettings(storage="local", storage_root=tmp_path / "env-root"))
    storage = env.storage
    assert isinstance(storage, LocalFileStorage)
    assert storage.root == (tmp_path / "env-root").resolve()
    storage.put("uploads/a.txt", b"hi")
    assert (tmp_path / "env-root" / "uploads" / "a.txt").read_bytes() == b"hi"


def test_a_key_is_the_file_at_that_path_under_root(storage: LocalFileStorage, root: Path) -> None:
    storage.put("uploads/a.txt", b"one")
    storage.put_stream("uploads/deep/b.bin", iter([b"t", b"wo"]))
    assert tree(root) == {
        "uploads": None,
        "uploads/a.txt": b"one",
        "uploads/deep": None,
        "uploads/deep/b.bin": b"two",
    }


@pytest.mark.parametrize(
    "key",
    ["../../etc/passwd", "../outside.txt", "a/../../outside.txt", "../root-sibling/x"],
)
def test_traversal_keys_write_nothing_anywhere(
    storage: LocalFileStorage, tmp_path: Path, key: str
) -> None:
    (tmp_path / "etc").mkdir()
    before = tree(tmp_path)
    with pytest.raises(InvalidKeyError, match=r"'\.\.'"):
        storage.put(key, b"pwned")
    with pytest.raises(InvalidKeyError):
        storage.put_stream(key, iter([b"pwned"]))
    assert tree(tmp_path) == before


def test_an_absolute_key_writes_nothing_at_that_path(
    storage: LocalFileStorage, tmp_path: Path
) -> None:
    target = tmp_path / "absolute.txt"
    with pytest.raises(InvalidKeyError, match="absolute"):
        storage.put(str(target), b"pwned")
    assert not target.exists()
    assert not storage.root.exists()  # not even the root was created


@pytest.fixture
def outside(tmp_path: Path, root: Path) -> Path:
    """A directory outside the root holding a secret, linked into the root as ``link``."""
    out = tmp_path / "outside"
    out.mkdir()
    (out / "secret").write_bytes(b"secret")
    root.mkdir()
    (root / "link").symlink_to(out, target_is_directory=True)
    (root / "file-link").symlink_to(out / "secret")
    return out


def test_a_symlinked_directory_cannot_be_used_to_escape_the_root(
    storage: LocalFileStorage, outside: Path
) -> None:
    before = tree(outside)
    for call in (
        lambda: storage.put("link/planted", b"x"),
        lambda: storage.put_stream("link/planted", iter([b"x"])),
        lambda: storage.get("link/secret"),
        lambda: storage.get_stream("link/secret"),
        lambda: storage.exists("link/secret"),
        lambda: storage.delete("link/secret"),
        lambda: storage.list("link/"),
    ):
        with pytest.raises(InvalidKeyError, match="outside the storage root"):
            call()
    assert tree(outside) == before


def test_a_symlinked_file_pointing_outside_is_refused(
    storage: LocalFileStorage, outside: Path
) -> None:
    with pytest.raises(InvalidKeyError, match="outside the storage root"):
        storage.get("file-link")
    with pytest.raises(InvalidKeyError, match="outside the storage root"):
        storage.put("file-link", b"overwrite")
    assert (outside / "secret").read_bytes() == b"secret"


def test_list_does_not_follow_symlinks(storage: LocalFileStorage, outside: Path) -> None:
    storage.put("real", b"v")
    assert [i.key for i in storage.list()] == ["real"]


def test_writes_leave_no_temporary_files(storage: LocalFileStorage, root: Path) -> None:
    storage.put("a/x", b"1")
    storage.put("a/x", b"2")
    storage.put_stream("a/y", iter([b"3"] * 10))
    assert [p.name for p in root.rglob("*") if p.name.startswith(RESERVED_PREFIX)] == []
    assert tree(root) == {"a": None, "a/x": b"2", "a/y": b"3" * 10}


def test_readers_see_the_old_file_until_the_new_one_is_complete(
    storage: LocalFileStorage, root: Path
) -> None:
    storage.put("doc", b"old")
    seen = []

    def chunks() -> Iterator[bytes]:
        yield b"new-1"
        seen.append((root / "doc").read_bytes())
        yield b"new-2"
        seen.append((root / "doc").read_bytes())

    storage.put_stream("doc", chunks())
    assert seen == [b"old", b"old"]
    assert storage.get("doc") == b"new-1new-2"


def test_a_failing_stream_leaves_no_file_no_temp_file_and_no_new_directory(
    storage: LocalFileStorage, root: Path
) -> None:
    storage.put("keep", b"old")

    def chunks() -> Iterator[bytes]:
        yield b"x" * 100_000
        raise OSError("disk source vanished")

    with pytest.raises(OSError, match="vanished"):
        storage.put_stream("new/deep/dir/file", chunks())
    with pytest.raises(OSError, match="vanished"):
        storage.put_stream("keep", chunks())
    assert tree(root) == {"keep": b"old"}


def test_a_key_cannot_be_both_a_file_and_a_directory(storage: LocalFileStorage, root: Path) -> None:
    storage.put("a", b"file")
    with pytest.raises(StorageError, match=r"'a/b'.*in the way"):
        storage.put("a/b", b"x")
    storage.put("c/d", b"x")
    with pytest.raises(StorageError, match=r"'c'.*in the way"):
        storage.put("c", b"x")
    assert tree(root) == {"a": b"file", "c": None, "c/d": b"x"}
    assert storage.delete("c") is False  # a directory is not an object


def test_delete_prunes_directories_it_empties(storage: LocalFileStorage, root: Path) -> None:
    storage.put("x/y/z", b"1")
    storage.put("x/keep", b"2")
    storage.delete("x/y/z")
    assert tree(root) == {"x": None, "x/keep": b"2"}
    storage.delete("x/keep")
    assert tree(root) == {}
    assert root.is_dir()


def test_list_skips_temporary_and_foreign_files(storage: LocalFileStorage, root: Path) -> None:
    storage.put("dir/ok", b"v")
    (root / "dir" / f"{RESERVED_PREFIX}abc").write_bytes(b"half-written")
    (root / "back\\slash").write_bytes(b"not a valid key")
    assert [i.key for i in storage.list()] == ["dir/ok"]


def test_reads_of_a_directory_are_not_found(storage: LocalFileStorage) -> None:
    storage.put("d/f", b"v")
    assert not storage.exists("d")
    with pytest.raises(KeyError):
        storage.get("d")


def test_root_is_created_on_first_write_only(root: Path) -> None:
    storage = LocalFileStorage(root=root)
    assert list(storage.list()) == []
    assert not storage.exists("k")
    assert not root.exists()
    storage.put("k", b"v")
    assert root.is_dir()
