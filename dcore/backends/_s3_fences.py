"""Fenced writes on S3: the key's fence record and the object, both written with S3's
conditional requests (``If-None-Match: *`` to create, ``If-Match: <ETag>`` to replace;
AWS S3 and MinIO since 2024), so the check holds across processes and hosts.

The record of a key is its own object (see ``_fences``). A fenced write

1. reads the object's ETag (HEAD), then the fence record and its ETag;
2. refuses (``StaleFenceError``) if the record shows a newer fence or another lock;
3. if its fence is newer than the record, replaces the record conditionally on the ETag
   it read, so the record only ever grows;
4. puts the object conditionally on the ETag read in step 1,

and starts again from 1 whenever a condition fails: another writer got in between.

Why that holds: the object lands only if no write changed it since step 1. A newer
fence's write that landed before step 1 had recorded its fence before landing, and
records only grow, so step 2 sees it. Hence fenced writes land in fence order: a write
that starts after a newer fence's write returned is refused, and one in flight while a
newer fence writes either lands before it or is refused. Reading the record before the
object would break this for a holder writing again with its own (equal) fence: it skips
step 3, so nothing else would catch a newer write landing between its two reads.

Crashes and retries: a writer stopped between 3 and 4 leaves its fence recorded over the
older object, which only refuses older fences. A conditional put that was applied but
whose answer was lost is retried by botocore and fails its condition (the ETag is now its
own), so the loop reads again and, holding an equal fence, writes again: idempotent. (Should a
newer fence land in that moment, the retry is refused although the first try had landed,
before the newer write: the order still holds.)

The one gap, from S3 itself: an ETag is the MD5 of the bytes. If, while a stale writer is
between 1 and 4, newer writers change the object and then put back exactly the bytes it
read, its condition still holds and its write lands.

An S3-compatible server that ignores the conditional headers would make every check
void, so the first fenced write of a storage proves the server honours ``If-Match``.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, suppress
from typing import TYPE_CHECKING, Any

from dcore.backends._fences import (
    RECORD_DIR,
    decode_record,
    encode_record,
    must_record,
    record_key,
)
from dcore.errors import ObjectNotFoundError, StorageError
from dcore.services.fencing import Fence

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

__all__ = ["FENCED_ATTEMPTS", "PROBE_KEY", "FencedWrites"]

#: A conditional write whose condition failed: the ETag changed (412), another
#: conditional write won the race (409), or the object it had to match is gone (404).
_CONDITION_FAILED = {
    "PreconditionFailed",
    "412",
    "ConditionalRequestConflict",
    "409",
    "NoSuchKey",
    "404",
    "NotFound",
}
#: A fenced write starts again when another writer got in between; this bounds a writer
#: that keeps losing (each lost attempt means someone else's write landed).
FENCED_ATTEMPTS = 20
PROBE_KEY = f"{RECORD_DIR}/conditional-write-probe"

Translate = Callable[[str, "str | None"], AbstractContextManager[None]]


class FencedWrites:
    """The protocol over one bucket, with the storage's client and error translation."""

    def __init__(self, client: S3Client, bucket: str, endpoint: str, translate: Translate) -> None:
        self._client = client
        self._bucket = bucket
        self._endpoint = endpoint
        self._translate = translate
        self._conditions_checked = False

    def put(self, key: str, blob: bytes, metadata: dict[str, str], fence: Fence) -> None:
        """Store ``blob`` under ``key`` (both checked already) as the holder of ``fence``."""
        self._check_conditions()
        where = record_key(key)
        for _ in range(FENCED_ATTEMPTS):
            etag = self._etag(key)  # before the record: see the module docstring
            latest, record_etag = self._read_record(key, where)
            if must_record(key, fence, latest) and not self._put_if(
                where, encode_record(key, fence), record_etag
            ):
                continue
            if self._put_if(key, blob, etag, metadata):
                return
        raise StorageError(
            f"fenced write to {key!r} in bucket {self._bucket!r} at {self._endpoint} gave "
            f"up after {FENCED_ATTEMPTS} attempts: each time another writer changed the "
            "object or its fence record first. Are unfenced writes or deletes racing on "
            "the key? Retry later"
        )

    def fence_of(self, key: str) -> Fence | None:
        return self._read_record(key, record_key(key))[0]

    def _etag(self, key: str) -> str | None:
        try:
            with self._translate("head", key):
                return self._client.head_object(Bucket=self._bucket, Key=key)["ETag"]
        except ObjectNotFoundError:
            return None

    def _read_record(self, key: str, where: str) -> tuple[Fence | None, str | None]:
        try:
            with self._translate("get fence record of", key):
                response = self._client.get_object(Bucket=self._bucket, Key=where)
                blob = response["Body"].read()
        except ObjectNotFoundError:
            return None, None
        return decode_record(key, blob, f"{where} in bucket {self._bucket!r}"), response["ETag"]

    def _put_if(
        self, key: str, blob: bytes, etag: str | None, metadata: dict[str, str] | None = None
    ) -> bool:
        """PutObject if the object's ETag is still ``etag`` (None: if it does not exist);
        False when that condition failed."""
        from botocore.exceptions import ClientError

        kwargs: dict[str, Any] = {"Bucket": self._bucket, "Key": key, "Body": blob}
        if metadata:
            kwargs["Metadata"] = metadata
        if etag is None:
            kwargs["IfNoneMatch"] = "*"
        else:
            kwargs["IfMatch"] = etag
        with self._translate("conditional put", key):
            try:
                self._client.put_object(**kwargs)
            except ClientError as exc:
                if str(exc.response.get("Error", {}).get("Code", "")) in _CONDITION_FAILED:
                    return False
                raise
        return True

    def _check_conditions(self) -> None:
        """Once: a put that must fail (If-Match on an ETag no object has) proves the
        server checks conditions instead of ignoring the headers."""
        if self._conditions_checked:
            return
        if self._put_if(PROBE_KEY, b"", '"dcore-conditional-write-probe"'):
            with suppress(Exception):
                self._client.delete_object(Bucket=self._bucket, Key=PROBE_KEY)
            raise StorageError(
                f"the S3 endpoint {self._endpoint} (bucket {self._bucket!r}) ignores "
                "conditional writes (a PutObject with If-Match on an ETag no object has "
                "succeeded), so fenced writes cannot be checked there. Use AWS S3 or a "
                "MinIO release from 2024 or later"
            )
        self._conditions_checked = True
