"""Service interfaces: what a backend must do. Implementations live in dcore.backends."""

from dcore.services.events import Event, EventBusInterface, Subscription
from dcore.services.jobs import (
    AnnouncingJobStore,
    JobRecord,
    JobState,
    JobStorageInterface,
    Transition,
)
from dcore.services.locks import Lock, LockInterface
from dcore.services.storage import ObjectInfo, StorageInterface

__all__ = [
    "AnnouncingJobStore",
    "Event",
    "EventBusInterface",
    "JobRecord",
    "JobState",
    "JobStorageInterface",
    "Lock",
    "LockInterface",
    "ObjectInfo",
    "StorageInterface",
    "Subscription",
    "Transition",
]
