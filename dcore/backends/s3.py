"""Object storage on S3 or an S3-compatible server (MinIO), through boto3.

Registered as ``s3`` and ``minio``: ``DCORE_STORAGE=minio`` plus ``DCORE_S3_*`` swaps the
local default for a bucket. boto3 is imported only when an :class:`S3Storage` is built,
so ``import dcore`` (and this module's registration) works without it.

Large objects never sit in memory: ``put_stream`` uploads them as a multipart upload
with a bounded number of parts in flight (``max_concurrency``, each part sent on its own
pooled connection), aborted on any failure so nothing partial is left; ``get_stream``
reads the response body in chunks. Every object carries its sha256 in the
``x-amz-meta-sha256`` metadata, and every part a CRC32 the server checks
(``part_checksums``). A seekable source (a file, a spooled upload) is hashed in a first
local pass, so the upload carries its sha256 from the start; a one-pass stream only
knows its hash at the end, so it is set by an in-place server-side copy after completion.

Fenced writes (``put_fenced``) hold across processes and hosts through S3's conditional
writes (``If-Match`` / ``If-None-Match``); the protocol and its guarantee are in
:mod:`dcore.backends._s3_fences`.

Errors are translated at this boundary: a missing key is ``ObjectNotFoundError``; a
missing bucket, rejected credentials and an unreachable endpoint get messages naming
the bucket and endpoint (never the secret key) and the fix.
"""

from __future__ import annotations

import base64
import hashlib
import threading
import zlib
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any, BinaryIO, NoReturn, TypeGuard

from pydantic import SecretStr

from dcore._plugins.registry import default_registry, register_plugin
from dcore.backends._keys import as_bytes, iter_source, validate_key, validate_prefix
from dcore.backends._s3_fences import FencedWrites
from dcore.backends._s3_parts import (
    read_exactly,
    read_parts,
    scan_parts,
    send_parts,
    split_parts,
)
from dcore.errors import ObjectNotFoundError, ServiceUnavailableError, StorageError
from dcore.services.fencing import Fence, check_fence
from dcore.services.storage import ObjectInfo, StorageInterface

if TYPE_CHECKING:
    from boto3.session import Session
    from mypy_boto3_s3.client import S3Client

    from dcore._core.environment import Environment

__all__ = ["S3Storage"]

MiB = 1024 * 1024
#: S3's smallest part (all but the last) and largest part of a multipart upload.
MIN_PART_SIZE = 5 * MiB
MAX_PART_SIZE = 5 * 1024 * MiB
MAX_PARTS = 10_000
#: The largest object one CopyObject can copy; above it the copy is multipart.
_SINGLE_COPY_LIMIT = 5 * 1024 * MiB
_SHA256_META = "sha256"
_MISSING_KEY_CODES = {"NoSuchKey", "404", "NotFound"}
_MISSING_BUCKET_CODES = {"NoSuchBucket"}
_AUTH_CODES = {
    "403",
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "InvalidClientTokenId",
}


@register_plugin("minio", registry=default_registry())
@register_plugin("s3", registry=default_registry())
class S3Storage(StorageInterface):
    """Objects in one bucket. Pass ``client`` to use a ready boto3 S3 client (the
    connection options are then ignored; give it ``max_pool_connections`` of at least
    ``max_concurrency``); otherwise one is built with botocore's standard retry mode,
    bounded connect/read timeouts and a connection pool as large as ``max_concurrency``.

    A multipart upload sends up to ``max_concurrency`` parts at once, so ``put_stream``
    holds at most ``multipart_threshold`` plus ``max_concurrency + 1`` parts of
    ``multipart_chunk_size`` bytes. ``part_checksums`` sends each part's CRC32 for the
    server to verify; turn it off only for an S3-compatible server that rejects the
    ``x-amz-checksum-crc32`` header.

    The bucket is checked once, on first use: missing, it is created when
    ``create_bucket`` is true and otherwise reported with the fix.
    """

    def __init__(
        self,
        *,
        bucket: str = "dcore",
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        access_key: str | None = None,
        secret_key: SecretStr | str | None = None,
        path_style: bool = True,
        create_bucket: bool = False,
        multipart_threshold: int = 8 * MiB,
        multipart_chunk_size: int = 8 * MiB,
        page_size: int = 1000,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        max_attempts: int = 3,
        max_concurrency: int = 4,
        part_checksums: bool = True,
        client: S3Client | None = None,
    ) -> None:
        if not MIN_PART_SIZE <= multipart_chunk_size <= MAX_PART_SIZE:
            raise ValueError(
                f"multipart_chunk_size={multipart_chunk_size} is outside S3's part size "
                f"limits [{MIN_PART_SIZE}, {MAX_PART_SIZE}] bytes"
            )
        if not 1 <= multipart_threshold <= MAX_PART_SIZE:
            raise ValueError(
                f"multipart_threshold={multipart_threshold} must be between 1 and "
                f"{MAX_PART_SIZE} bytes (one PutObject's limit)"
            )
        if not 1 <= page_size <= 1000:
            raise ValueError(f"page_size={page_size} must be between 1 and 1000 (S3's maximum)")
        if max_attempts < 1:
            raise ValueError(f"max_attempts={max_attempts} must be at least 1")
        if max_concurrency < 1:
            raise ValueError(
                f"max_concurrency={max_concurrency} must be at least 1 (parts sent at once)"
            )
        self._bucket = bucket
        self._access_key = access_key
        self._create_bucket = create_bucket
        self._threshold = multipart_threshold
        self._chunk_size = multipart_chunk_size
        self._page_size = page_size
        self._concurrency = max_concurrency
        self._part_checksums = part_checksums
        self._owns_client = client is None
        if client is None:
            secret = (
                secret_key
                if isinstance(secret_key, SecretStr) or secret_key is None
                else (SecretStr(secret_key))
            )
            client = _make_client(
                endpoint_url=endpoint_url,
                region=region,
                access_key=access_key,
                secret_key=secret,
                path_style=path_style,
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                max_attempts=max_attempts,
                pool_size=max(10, max_concurrency),
            )
        self._client: S3Client = client
        self._endpoint = str(client.meta.endpoint_url)
        self._bucket_checked = False
        self._bucket_lock = threading.Lock()
        self._fences = FencedWrites(self._client, bucket, self._endpoint, self._translate)

    @classmethod
    def from_environment(cls, env: Environment, **options: Any) -> S3Storage:
        s = env.settings
        settings: dict[str, Any] = {
            "endpoint_url": s.s3_endpoint,
            "bucket": s.s3_bucket,
            "region": s.s3_region,
            "access_key": s.s3_access_key,
            "secret_key": s.s3_secret_key,
            "path_style": s.s3_path_style,
            "create_bucket": s.s3_create_bucket,
        }
        return cls(**{**settings, **options})

    @property
    def bucket(self) -> str:
        return self._bucket

    @property
    def endpoint(self) -> str:
        return self._endpoint

    @property
    def client(self) -> S3Client:
        """The boto3 client (for tests and operations the interface does not cover)."""
        return self._client

    # -- writing --------------------------------------------------------------------
    def put(self, key: str, data: bytes) -> ObjectInfo:
        key = validate_key(key)
        blob = as_bytes(data, "put() data")
        self._ensure_bucket()
        return self._put_single(key, blob, hashlib.sha256(blob).hexdigest())

    def _put_single(self, key: str, blob: bytes, digest: str) -> ObjectInfo:
        with self._translate("put", key):
            self._client.put_object(
                Bucket=self._bucket, Key=key, Body=blob, Metadata={_SHA256_META: digest}
            )
        return ObjectInfo(key=key, size=len(blob), sha256=digest)

    def put_stream(self, key: str, chunks: Iterable[bytes] | BinaryIO) -> ObjectInfo:
        """Streams under ``multipart_threshold`` are one PutObject; larger ones a multipart
        upload. A seekable file object is read twice: once to hash it, then to send it,
        each part checked against the first read, so a file that changes in between fails
        instead of being stored under a wrong sha256."""
        key = validate_key(key)
        self._ensure_bucket()
        if _seekable(chunks):
            return self._put_file(key, chunks)
        if callable(getattr(chunks, "read", None)):
            return self._put_chunks(key, read_parts(chunks, self._chunk_size))
        return self._put_chunks(key, iter_source(chunks, self._chunk_size))

    def _put_chunks(self, key: str, source: Iterator[bytes]) -> ObjectInfo:
        """A one-pass stream: hashed as it is read; the sha256 is attached at the end."""
        digest = hashlib.sha256()
        head: deque[bytes] = deque()
        size = 0
        for chunk in source:
            digest.update(chunk)
            head.append(chunk)
            size += len(chunk)
            if size >= self._threshold:
                break
        else:
            return self._put_single(key, b"".join(head), digest.hexdigest())
        del chunk  # the head deque is the only holder, so sent parts are freed

        def rest() -> Iterator[bytes]:
            nonlocal size
            while head:  # popped, so a part that has been sent is not held here
                yield head.popleft()
            for chunk in source:
                digest.update(chunk)
                size += len(chunk)
                yield chunk
                del chunk  # not held while the next one is read

        upload_id = self._create_upload(key, metadata=None)
        parts = self._limited(key, split_parts(rest(), self._chunk_size))
        self._send_and_complete(key, upload_id, parts, checks=None)
        sha = digest.hexdigest()
        self._store_checksum(key, sha, size)
        return ObjectInfo(key=key, size=size, sha256=sha)

    def _put_file(self, key: str, source: BinaryIO) -> ObjectInfo:
        """A seekable file: hashed in a first pass, so the upload carries its sha256 from
        the start and needs no copy afterwards. The first pass keeps each part's CRC32;
        a part that reads differently the second time fails the upload."""
        start = source.tell()
        head = read_exactly(source, self._threshold)
        if len(head) < self._threshold:
            return self._put_single(key, head, hashlib.sha256(head).hexdigest())
        del head
        source.seek(start)
        sha, size, checks = scan_parts(source, self._chunk_size)
        if len(checks) > MAX_PARTS:
            self._too_many_parts(key)
        source.seek(start)
        upload_id = self._create_upload(key, metadata={_SHA256_META: sha})

        def parts() -> Iterator[bytes]:
            for number in range(1, len(checks) + 1):
                expected = min(self._chunk_size, size - (number - 1) * self._chunk_size)
                body = read_exactly(source, expected)
                if len(body) != expected:
                    self._changed(key, number)
                yield body

        self._send_and_complete(key, upload_id, parts(), checks=checks)
        return ObjectInfo(key=key, size=size, sha256=sha)

    def _create_upload(self, key: str, metadata: dict[str, str] | None) -> str:
        kwargs: dict[str, Any] = {"Bucket": self._bucket, "Key": key}
        if metadata:
            kwargs["Metadata"] = metadata
        if self._part_checksums:
            kwargs["ChecksumAlgorithm"] = "CRC32"
        with self._translate("create_multipart_upload", key):
            return self._client.create_multipart_upload(**kwargs)["UploadId"]

    def _send_and_complete(
        self, key: str, upload_id: str, parts: Iterable[bytes], checks: list[int] | None
    ) -> None:
        """Send the parts and complete the upload; on any failure (the source, a part, the
        completion, an interrupt) abort it, once no part is still being sent."""

        def send(number: int, body: bytes) -> dict[str, Any]:
            expected = None if checks is None else checks[number - 1]
            return self._upload_part(key, upload_id, number, body, expected)

        try:
            completed = send_parts(parts, send, self._concurrency)
            with self._translate("complete_multipart_upload", key):
                self._client.complete_multipart_upload(
                    Bucket=self._bucket,
                    Key=key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": completed},  # type: ignore[typeddict-item]
                )
        except BaseException:
            # Best effort: if the endpoint is gone, a bucket lifecycle rule
            # (AbortIncompleteMultipartUpload) is the backstop.
            with suppress(Exception):
                self._client.abort_multipart_upload(
                    Bucket=self._bucket, Key=key, UploadId=upload_id
                )
            raise

    def _limited(self, key: str, parts: Iterator[bytes]) -> Iterator[bytes]:
        for number, part in enumerate(parts, 1):
            if number > MAX_PARTS:
                self._too_many_parts(key)
            yield part
            del part  # not held while the next one is read

    def _upload_part(
        self, key: str, upload_id: str, number: int, body: bytes, expected: int | None
    ) -> dict[str, Any]:
        """One part (run on a sender thread). ``expected`` is the CRC32 the first pass over
        a file saw for this part."""
        kwargs: dict[str, Any] = {
            "Bucket": self._bucket,
            "Key": key,
            "UploadId": upload_id,
            "PartNumber": number,
            "Body": body,
        }
        if self._part_checksums or expected is not None:
            crc = zlib.crc32(body)
            if expected is not None and crc != expected:
                self._changed(key, number)
            if self._part_checksums:
                kwargs["ChecksumCRC32"] = base64.b64encode(crc.to_bytes(4, "big")).decode()
        with self._translate("upload_part", key):
            response = self._client.upload_part(**kwargs)
        part = {"ETag": response["ETag"], "PartNumber": number}
        if self._part_checksums:
            part["ChecksumCRC32"] = kwargs["ChecksumCRC32"]
        return part

    def _too_many_parts(self, key: str) -> NoReturn:
        raise StorageError(
            f"stream for key {key!r} needs more than {MAX_PARTS} parts of "
            f"{self._chunk_size} bytes; raise multipart_chunk_size"
        )

    def _changed(self, key: str, number: int) -> NoReturn:
        raise StorageError(
            f"the file for key {key!r} changed while it was being uploaded (part {number} "
            "differs from the bytes that were hashed); nothing was stored. Upload it again "
            "once nothing is writing to it"
        )

    def _store_checksum(self, key: str, sha: str, size: int) -> None:
        """Attach the sha256 to a completed multipart object by copying it onto itself.
        If that fails the object is deleted, so a stream is stored with its checksum or
        not at all."""
        source = {"Bucket": self._bucket, "Key": key}
        meta = {_SHA256_META: sha}
        try:
            with self._translate("copy_object", key):
                if size <= _SINGLE_COPY_LIMIT:
                    self._client.copy_object(
                        Bucket=self._bucket,
                        Key=key,
                        CopySource=source,  # type: ignore[arg-type]
                        Metadata=meta,
                        MetadataDirective="REPLACE",
                    )
                else:
                    from boto3.s3.transfer import TransferConfig

                    self._client.copy(
                        source,  # type: ignore[arg-type]
                        self._bucket,
                        key,
                        ExtraArgs={"Metadata": meta, "MetadataDirective": "REPLACE"},
                        Config=TransferConfig(
                            multipart_threshold=_SINGLE_COPY_LIMIT,
                            multipart_chunksize=self._chunk_size,
                            use_threads=False,
                        ),
                    )
        except BaseException:
            with suppress(Exception):
                self._client.delete_object(Bucket=self._bucket, Key=key)
            raise

    # -- fenced writes --------------------------------------------------------------
    def put_fenced(self, key: str, data: bytes, fence: Fence | None) -> ObjectInfo:
        """Conditional writes; see :mod:`dcore.backends._s3_fences`."""
        key = validate_key(key)
        fence = check_fence(fence, f"put_fenced({key!r})")
        blob = as_bytes(data, "put_fenced() data")
        self._ensure_bucket()
        digest = hashlib.sha256(blob).hexdigest()
        self._fences.put(key, blob, {_SHA256_META: digest}, fence)
        return ObjectInfo(key=key, size=len(blob), sha256=digest)

    def fence_of(self, key: str) -> Fence | None:
        key = validate_key(key)
        self._ensure_bucket()
        return self._fences.fence_of(key)

    # -- reading --------------------------------------------------------------------
    def get(self, key: str) -> bytes:
        key = validate_key(key)
        self._ensure_bucket()
        with self._translate("get", key):
            return self._client.get_object(Bucket=self._bucket, Key=key)["Body"].read()

    def get_stream(self, key: str, chunk_size: int = MiB) -> Iterator[bytes]:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
        key = validate_key(key)
        self._ensure_bucket()
        with self._translate("get", key):  # eager, so a missing key raises at the call
            body = self._client.get_object(Bucket=self._bucket, Key=key)["Body"]
        return self._read(key, body, chunk_size)

    def _read(self, key: str, body: Any, chunk_size: int) -> Iterator[bytes]:
        try:
            with self._translate("get", key):
                yield from body.iter_chunks(chunk_size)
        finally:
            body.close()

    def info(self, key: str) -> ObjectInfo:
        """Size and stored sha256 of one object (a HEAD; not in the interface yet)."""
        key = validate_key(key)
        self._ensure_bucket()
        with self._translate("head", key):
            head = self._client.head_object(Bucket=self._bucket, Key=key)
        sha = head.get("Metadata", {}).get(_SHA256_META)
        return ObjectInfo(key=key, size=head["ContentLength"], sha256=sha)

    def exists(self, key: str) -> bool:
        try:
            self.info(key)
        except ObjectNotFoundError:
            return False
        return True

    def delete(self, key: str) -> bool:
        """S3's DeleteObject does not say whether the key existed, so this HEADs first;
        two concurrent deletes may both return True."""
        if not self.exists(key):
            return False
        with self._translate("delete", key):
            self._client.delete_object(Bucket=self._bucket, Key=key)
        return True

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every page, in S3's key order. ``sha256`` is None here (a HEAD per object
        would be too slow); use :meth:`info`. Objects whose keys dcore would reject
        (``a//b``, written by other tools) are skipped, since get() could not read them."""
        prefix = validate_prefix(prefix)
        self._ensure_bucket()
        return self._pages(prefix)

    def _pages(self, prefix: str) -> Iterator[ObjectInfo]:
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {
                "Bucket": self._bucket,
                "Prefix": prefix,
                "MaxKeys": self._page_size,
            }
            if token:
                kwargs["ContinuationToken"] = token
            with self._translate("list", prefix):
                page = self._client.list_objects_v2(**kwargs)
            for obj in page.get("Contents", []):
                key = obj["Key"]
                if _valid(key):
                    yield ObjectInfo(key=key, size=obj["Size"], sha256=None)
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return

    # -- bucket and errors ----------------------------------------------------------
    def _ensure_bucket(self) -> None:
        with self._bucket_lock:
            if self._bucket_checked:
                return
            from botocore.exceptions import ClientError

            missing = False
            with self._translate("head_bucket", None):
                try:
                    self._client.head_bucket(Bucket=self._bucket)
                except ClientError as exc:
                    if _code(exc) not in {"404", "NoSuchBucket", "NotFound"}:
                        raise
                    missing = True
            if missing:
                if not self._create_bucket:
                    self._missing_bucket()
                self._make_bucket()
            self._bucket_checked = True

    def _make_bucket(self) -> None:
        from botocore.exceptions import ClientError

        region = self._client.meta.region_name
        kwargs: dict[str, Any] = {"Bucket": self._bucket}
        if region and region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        with self._translate("create_bucket", None):
            try:
                self._client.create_bucket(**kwargs)
            except ClientError as exc:  # created meanwhile by another client: fine
                if _code(exc) != "BucketAlreadyOwnedByYou":
                    raise

    def _missing_bucket(self) -> NoReturn:
        raise StorageError(
            f"S3 bucket {self._bucket!r} does not exist at {self._endpoint}; create it, or set "
            "DCORE_S3_CREATE_BUCKET=true (create_bucket=True) to create it on first use"
        )

    @contextmanager
    def _translate(self, op: str, key: str | None) -> Iterator[None]:
        """Turn botocore errors into dcore's, naming bucket and endpoint, never secrets."""
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            ConnectionError,
            HTTPClientError,
            NoCredentialsError,
            PartialCredentialsError,
        )

        where = f"bucket {self._bucket!r} at {self._endpoint}"
        what = f"S3 {op}" if key is None else f"S3 {op} of {key!r}"
        try:
            yield
        except ClientError as exc:
            code = _code(exc)
            if key is not None and code in _MISSING_KEY_CODES and op != "list":
                raise ObjectNotFoundError(f"no object under key {key!r} in {where}") from exc
            if code in _MISSING_BUCKET_CODES:
                self._bucket_checked = False
                self._missing_bucket()
            if code in _AUTH_CODES:
                who = f" (access key {self._access_key!r})" if self._access_key else ""
                raise ServiceUnavailableError(
                    f"S3 endpoint {self._endpoint} refused {op} on bucket {self._bucket!r}: "
                    f"{code}. The credentials{who} are wrong or lack permission; check "
                    "DCORE_S3_ACCESS_KEY and DCORE_S3_SECRET_KEY"
                ) from exc
            message = exc.response.get("Error", {}).get("Message", "")
            raise StorageError(f"{what} in {where} failed: {code} {message}".rstrip()) from exc
        except (NoCredentialsError, PartialCredentialsError) as exc:
            raise ServiceUnavailableError(
                f"no S3 credentials for {self._endpoint}: set DCORE_S3_ACCESS_KEY and "
                "DCORE_S3_SECRET_KEY (or the AWS_* variables)"
            ) from exc
        except (ConnectionError, HTTPClientError) as exc:
            raise ServiceUnavailableError(
                f"S3 endpoint {self._endpoint} is unreachable ({op} on bucket "
                f"{self._bucket!r}: {type(exc).__name__}); check DCORE_S3_ENDPOINT and that "
                "the server is running"
            ) from exc
        except BotoCoreError as exc:
            raise StorageError(f"{what} in {where} failed: {exc}") from exc

    def close(self) -> None:
        if self._owns_client:
            self._client.close()

    def __repr__(self) -> str:
        return f"S3Storage(bucket={self._bucket!r}, endpoint={self._endpoint!r})"


def _code(exc: Any) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _seekable(source: object) -> TypeGuard[BinaryIO]:
    """Whether ``put_stream`` may read ``source`` twice (hash, then send)."""
    seekable = getattr(source, "seekable", None)
    if not callable(seekable) or not callable(getattr(source, "read", None)):
        return False
    try:
        return bool(seekable())
    except (OSError, ValueError):  # a closed file says so when it is read
        return False


def _valid(key: str) -> bool:
    try:
        validate_key(key)
    except StorageError:
        return False
    return True


_session: Session | None = None
_session_lock = threading.Lock()


def _make_client(
    *,
    endpoint_url: str | None,
    region: str,
    access_key: str | None,
    secret_key: SecretStr | None,
    path_style: bool,
    connect_timeout: float,
    read_timeout: float,
    max_attempts: int,
    pool_size: int,
) -> S3Client:
    try:
        import boto3
        from botocore.config import Config
    except ImportError as exc:
        raise ImportError(
            "the s3/minio storage backend needs boto3: pip install 'distributed-core[s3]'"
        ) from exc
    config = Config(
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        max_pool_connections=pool_size,  # one connection per part in flight
        # total_max_attempts counts the first try; botocore's max_attempts would not
        retries={"total_max_attempts": max_attempts, "mode": "standard"},
        s3={"addressing_style": "path" if path_style else "virtual"},
        signature_version="s3v4",
        # S3-compatible servers (older MinIO, Ceph) reject the checksums newer botocore
        # adds by default (aws-chunked trailers); integrity is covered by our sha256
        # metadata and by the plain CRC32 header sent with each part (part_checksums).
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    global _session
    # One private session (not boto3's global default) shared by every S3Storage, so
    # the service model is loaded once; sessions are not thread-safe, hence the lock.
    with _session_lock:
        if _session is None:
            _session = boto3.session.Session()
        return _session.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key.get_secret_value() if secret_key else None,
            config=config,
        )
