"""``DCORE_*`` settings: which backend serves each service, and how to reach it.

Swapping local files for MinIO is one variable: ``DCORE_STORAGE=minio``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = ["DcoreSettings"]


class DcoreSettings(BaseSettings):
    """Read from the environment with the ``DCORE_`` prefix (``DCORE_REDIS_URL`` …)."""

    model_config = SettingsConfigDict(env_prefix="DCORE_", extra="ignore")

    # which plugin serves each service (names in the registry)
    storage: str = "local"
    event_bus: str = "memory"
    job_store: str = "memory"
    locks: str = "memory"
    #: what the ``schedule_job`` Dispatch resolves to: auto = fastapi when the context
    #: carries BackgroundTasks, else thread; or inline, thread, fastapi, celery
    dispatcher: str = "auto"

    storage_root: Path = Path(".dcore/storage")
    redis_url: str = "redis://127.0.0.1:6379/0"
    #: seconds a Redis command may wait for its reply before it fails (a partitioned
    #: server must not hang a job forever); ``socket_timeout=`` in the URL wins
    redis_socket_timeout: float | None = Field(default=10.0, gt=0)
    key_prefix: str = "dcore"

    s3_endpoint: str | None = None
    s3_bucket: str = "dcore"
    s3_region: str = "us-east-1"
    s3_access_key: str | None = None
    s3_secret_key: SecretStr | None = None
    s3_path_style: bool = True
    s3_create_bucket: bool = False

    thread_workers: int = Field(default=4, ge=1)
    job_ttl: float = Field(default=7 * 24 * 3600.0, gt=0)

    #: modules a worker imports at start-up (context classes, core functions, plugins);
    #: ``DCORE_IMPORTS=app.tasks,app.models`` or a JSON list
    imports: Annotated[list[str], NoDecode] = Field(default_factory=list)

    celery_broker_url: str | None = None
    celery_queue: str = "dcore"
    celery_queues: int = Field(default=1, ge=1)
    celery_visibility_timeout: float = Field(default=300.0, gt=0)

    #: limits on an incoming job message: its JSON size, and how deeply its free-form
    #: parts (context data, stage options) may nest; a message over either is malformed
    message_max_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    message_max_depth: int = Field(default=32, ge=1, le=150)

    #: seconds a running delivery's lease on its job lasts; renewed every third of it
    #: while the delivery runs. Another delivery of the job waits while it is live and
    #: takes over once it ran out (the first delivery's worker is presumed dead)
    lease_ttl: float = Field(default=15.0, gt=0)
    #: how often a worker looks for jobs whose delivery was lost (0: never), and how old
    #: a PENDING job must be before it counts as lost while its queue is empty
    recovery_interval: float = Field(default=10.0, ge=0)
    recovery_pending_after: float = Field(default=60.0, gt=0)

    job_attempts: int = Field(default=1, ge=1)
    job_backoff: float = Field(default=2.0, ge=1.0)
    job_initial_delay: float = Field(default=1.0, ge=0)
    job_max_delay: float = Field(default=300.0, ge=0)
    dlq_topic: str = "dcore.dlq"

    @field_validator("imports", mode="before")
    @classmethod
    def _split_imports(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value
