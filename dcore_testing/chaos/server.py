"""The embedded Toxiproxy-compatible server: an asyncio core and a threaded wrapper.

:func:`serve` runs on any event loop (``python -m dcore_testing.chaos`` uses it).
:class:`ToxiproxyServer` owns a background thread with its own loop, so
synchronous tests can start one per session; nothing starts until ``start()``.

With ``seed`` set, every toxic draws from ``Random(derive(seed, proxy, toxic,
connection, stream))``: the same seed and the same traffic give the same
toxicity decisions and jitter values, whatever other proxies are doing. The real
server ignores its ``-seed`` flag.

Two safety defaults differ from the real server (DIFFERENCES.md): proxies listen
on and dial loopback addresses only unless ``allow_remote=True``, and the HTTP API
has the limits of :class:`~.http.HttpLimits` (request body size, connection count,
read / idle / write timeouts).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from .api import Api
from .http import (
    MAX_HEADER_BYTES,
    HttpLimits,
    Request,
    answer_and_close,
    serve_connection,
    too_many_connections,
)
from .registry import ApiError, Registry
from .toxics import Decision


@dataclass
class RunningServer:
    """A bound API server on the current loop."""

    api: Api
    registry: Registry
    server: asyncio.Server
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def close(self) -> None:
        self.server.close()
        await self.registry.close()


async def load_config(api: Api, path: str | Path) -> int:
    """Populate from a JSON file (the ``-config`` option); returns the proxy count."""
    body = Path(path).read_bytes()
    response = await api.populate(Request("POST", "/populate", "HTTP/1.1", {}, body), {})
    if response.status != 201:
        message = json.loads(response.body).get("error", "populate failed")
        raise ApiError(f"config {path}: {message}", response.status)
    return len(json.loads(response.body)["proxies"] or [])


async def serve(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    seed: int | None = None,
    config: str | Path | None = None,
    allow_remote: bool = False,
    limits: HttpLimits | None = None,
) -> RunningServer:
    """Bind the API on ``host:port`` (0 = ephemeral) and return the running server.

    ``allow_remote`` lets proxies listen on and dial non-loopback addresses;
    ``limits`` bounds the API's HTTP connections (defaults: :class:`HttpLimits`).
    """
    limits = limits or HttpLimits()
    registry = Registry(seed, allow_remote=allow_remote)
    api = Api(registry)
    if config is not None:
        await load_config(api, config)
    open_connections = 0

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal open_connections
        # Swallow the shutdown cancel: asyncio's stream callback logs it as an error otherwise.
        with contextlib.suppress(asyncio.CancelledError):
            if open_connections >= limits.max_connections:
                try:
                    await answer_and_close(reader, writer, too_many_connections(limits))
                finally:
                    writer.close()
                return
            open_connections += 1
            await serve_connection(reader, writer, api.handle, limits, on_finish=release)

    def release() -> None:
        nonlocal open_connections
        open_connections -= 1

    server = await asyncio.start_server(on_connection, host, port, limit=MAX_HEADER_BYTES)
    bound = server.sockets[0].getsockname()
    return RunningServer(api, registry, server, str(bound[0]), int(bound[1]))


class ToxiproxyServer:
    """An embedded server on a background thread: ``start()``/``stop()`` or ``with``.

    ``allow_remote=True`` lets proxies listen on and dial non-loopback addresses (off by
    default: a test fixture should not expose ports or relay to other hosts).
    ``limits`` sets the API's HTTP limits (:class:`HttpLimits`).

    >>> with ToxiproxyServer(seed=1) as server:   # doctest: +SKIP
    ...     client = ToxiproxyClient(server.url)
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        seed: int | None = None,
        config: str | Path | None = None,
        *,
        allow_remote: bool = False,
        limits: HttpLimits | None = None,
    ) -> None:
        if limits is not None and not isinstance(limits, HttpLimits):
            raise TypeError(
                f"ToxiproxyServer limits must be an HttpLimits, got {type(limits).__name__}; "
                "e.g. limits=HttpLimits(max_body_bytes=1 << 20)"
            )
        self._host = host
        self._port = port
        self.seed = seed
        self._config = config
        self.allow_remote = allow_remote
        self.limits = limits or HttpLimits()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._running: RunningServer | None = None

    @property
    def running(self) -> RunningServer:
        if self._running is None:
            raise RuntimeError(
                "ToxiproxyServer is not started; call start() or use it as a context manager"
            )
        return self._running

    @property
    def host(self) -> str:
        return self.running.host

    @property
    def port(self) -> int:
        return self.running.port

    @property
    def url(self) -> str:
        return self.running.url

    def start(self) -> ToxiproxyServer:
        """Start the loop thread and bind; raises the bind error if binding fails."""
        if self._thread is not None:
            raise RuntimeError("ToxiproxyServer already started")
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []

        async def boot() -> None:
            try:
                self._running = await serve(
                    self._host,
                    self._port,
                    seed=self.seed,
                    config=self._config,
                    allow_remote=self.allow_remote,
                    limits=self.limits,
                )
            except BaseException as exc:
                failure.append(exc)
            finally:
                ready.set()

        def run() -> None:
            asyncio.set_event_loop(loop)
            booting = loop.create_task(boot())
            loop.run_forever()
            del booting
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="toxiproxy-embedded", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self.stop()
            raise failure[0]
        return self

    def call(self, coro: Any) -> Any:
        """Run a coroutine on the server loop and wait for its result."""
        if self._loop is None:
            raise RuntimeError("ToxiproxyServer is not started")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    def decisions(self, proxy: str, toxic: str) -> list[Decision]:
        """The random draws a toxic made so far (toxicity rolls, jitter, slice offsets)."""

        async def read() -> list[Decision]:
            found = self.running.registry.get(proxy).find_toxic(toxic)
            if found is None:
                raise LookupError(f"proxy {proxy!r} has no toxic named {toxic!r}")
            return list(found.decisions)

        result: list[Decision] = self.call(read())
        return result

    def stop(self) -> None:
        """Close every proxy and the API, then end the loop thread. Idempotent."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if self._running is not None:
            running = self._running

            async def shutdown() -> None:
                await running.close()
                others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
                for task in others:
                    task.cancel()
                await asyncio.gather(*others, return_exceptions=True)

            with contextlib.suppress(Exception):  # best effort on a broken loop
                asyncio.run_coroutine_threadsafe(shutdown(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        self._loop = self._thread = self._running = None

    def __enter__(self) -> ToxiproxyServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
