"""``storage_write``: store a bytes field of the context under a key taken from another.

Defaults fit the upload example: the content of ``file_content`` is stored under
``prefix + file_path``. A key that escapes the storage root is rejected by the backend
(``InvalidKeyError``) and nothing is written.

With ``fenced=True`` the write carries the fence of the ``lock`` stage before it
(``storage.put_fenced(key, content, current_fence())``): if that lock expired and another
job took it and wrote the key, this write raises ``StaleFenceError`` and changes nothing.
Without a lock stage before it (or with a lock backend that issues no fences) such a
stage raises ``PipelineDefinitionError`` rather than write unfenced.
"""

from __future__ import annotations

from typing import Any

from dcore._plugins.interfaces import Execute, NextFn
from dcore._plugins.registry import default_registry, register_plugin
from dcore.errors import PipelineDefinitionError, PluginOptionsError
from dcore.services.fencing import current_fence
from dcore.services.storage import StorageInterface

__all__ = ["StorageWrite"]


@register_plugin("storage_write", registry=default_registry())
class StorageWrite(Execute[Any]):
    shareable = True  # holds only its options and the storage service

    def __init__(
        self,
        storage: StorageInterface,
        prefix: str = "",
        path_field: str = "file_path",
        content_field: str = "file_content",
        fenced: bool = False,
    ) -> None:
        self.storage = storage
        self.prefix = prefix
        self.path_field = path_field
        self.content_field = content_field
        self.fenced = fenced

    def _field(self, context: Any, name: str, option: str) -> Any:
        if name not in type(context).model_fields:
            raise PluginOptionsError(
                f"storage_write: {type(context).__name__} has no field {name!r} (option "
                f"{option}={name!r}); fields: {', '.join(type(context).model_fields)}"
            )
        return getattr(context, name)

    def execute(self, next_fn: NextFn[Any], context: Any) -> Any:
        key = self.prefix + str(self._field(context, self.path_field, "path_field"))
        content = self._field(context, self.content_field, "content_field")
        if isinstance(content, str):
            content = content.encode("utf-8")
        if not isinstance(content, bytes | bytearray):
            raise TypeError(
                f"storage_write: {self.content_field} must be bytes or str, "
                f"got {type(content).__name__}"
            )
        if not self.fenced:
            self.storage.put(key, bytes(content))
            return next_fn(context)
        fence = current_fence()
        if fence is None:
            raise PipelineDefinitionError(
                f"storage_write: fenced=True, but job {context.job_id} holds no lock fence "
                f"when writing {key!r}: chain Execute('lock', key=...) before this stage "
                "(with a lock backend that issues fences: memory or redis)"
            )
        self.storage.put_fenced(key, bytes(content), fence)
        return next_fn(context)
