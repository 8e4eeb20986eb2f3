"""One proxied connection: two links, each a live-rewirable chain of toxic stages.

A link carries one direction: ``upstream`` is client→server, ``downstream`` is
server→client. It is ``reader → stage₁ → … → stageₙ → writer``, with a bounded
:class:`Channel` in front of each stage and of the writer, so a stalled toxic
back-pressures the socket as in the real server. A link with no stage, and nothing
left in its writer's queue, is *direct*: what is read is written to the other socket
at once, from the read callback (see :mod:`.sockets`), which costs no task switch
and no queue. The first toxic added makes it queued again; bytes keep their order
across the switch because a direct write happens only when the queue is empty.

Live changes keep byte order without locks, because the event loop is single
threaded: a stage is stopped by cancelling its task (awaited), then, with no
``await`` in between, its predecessor is rewired and whatever it held or had
queued is pushed on in order. Emitters re-read their ``out`` after every wait,
so a put never lands in a channel that was just unlinked.

Close propagation follows Toxiproxy: end of stream (or an error) on either
side travels down that link's chain and, at the writer, closes *both* sockets;
TCP half-close is not supported.

Differences from Toxiproxy v2.12.0 (see DIFFERENCES.md): toxicity is rolled when
a stage starts and re-rolled only when *that* toxic is updated (the real server
also re-rolls a stage when a toxic is added after it or the one after it is
removed); removing a ``timeout`` toxic closes only the connections where it was
active; ``reset_peer`` sets ``SO_LINGER 0`` when it fires, not at setup.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections import deque
from typing import TYPE_CHECKING, Any, Final

from .sockets import CHUNK_SIZE, Side
from .toxics import Chunk, ToxicSpec, run_noop

if TYPE_CHECKING:
    import random

log = logging.getLogger(__name__)

_EOF: Final = None
Item = Chunk | None


class Channel:
    """A FIFO with a soft capacity: ``wait_writable`` blocks, ``force_put`` never does."""

    def __init__(self, capacity: int) -> None:
        self._items: deque[Item] = deque()
        self._capacity = capacity
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self.dead = False

    def _update(self) -> None:
        if self._items:
            self._readable.set()
        else:
            self._readable.clear()
        if self.dead or len(self._items) < self._capacity:
            self._writable.set()
        else:
            self._writable.clear()

    async def get(self) -> Item:
        while not self._items:
            await self._readable.wait()
        item = self._items.popleft()
        self._update()
        return item

    async def wait_writable(self) -> None:
        await self._writable.wait()

    @property
    def writable(self) -> bool:
        return self._writable.is_set()

    def __len__(self) -> int:
        return len(self._items)

    def force_put(self, item: Item) -> None:
        self._items.append(item)
        self._update()

    def push_front(self, item: Item) -> None:
        self._items.appendleft(item)
        self._update()

    def kill(self) -> list[Item]:
        """Mark unlinked, wake blocked emitters, and hand back what was queued."""
        items = list(self._items)
        self._items.clear()
        self.dead = True
        self._update()
        return items


class _Node:
    """Anything that emits into a link: the socket reader or a stage."""

    out: Channel

    async def emit(self, item: Item) -> None:
        while True:
            target = self.out
            await target.wait_writable()
            if target is self.out and not target.dead:
                target.force_put(item)
                return


class Stage(_Node):
    """One toxic running on one link; implements :class:`toxics.StageIO`."""

    def __init__(self, link: Link, spec: ToxicSpec) -> None:
        self.link = link
        self.spec = spec
        self.inq = Channel(spec.kind.buffer)
        self.rng: random.Random = spec.link_rng(link.conn.serial)
        self.state: dict[str, Any] = {}
        self.held: Chunk | None = None
        self.held_eof = False
        self.active = False
        self.task: asyncio.Task[None] | None = None

    # StageIO -----------------------------------------------------------------
    async def recv(self) -> Chunk | None:
        item = await self.inq.get()
        if item is None:
            self.held_eof = True
        self.held = item
        return item

    async def send(self, chunk: Chunk, rest: Chunk | None = None) -> None:
        await self.emit(chunk)
        self.held = rest

    async def send_eof(self) -> None:
        await self.emit(_EOF)
        self.held_eof = False

    def drop(self) -> None:
        self.held = None

    def reset(self) -> None:
        self.link.conn.close(reset=True)

    def log(self, kind: str, value: float) -> None:
        self.spec.record(self.link.conn.serial, kind, value)

    # lifecycle ---------------------------------------------------------------
    def start(self) -> None:
        """Roll toxicity (as Toxiproxy does each time a stage starts) and run."""
        draw = self.rng.random()
        self.active = draw < self.spec.toxicity
        self.log("toxicity", draw)
        self.task = asyncio.get_running_loop().create_task(self._main())

    async def _main(self) -> None:
        attrs = dict(self.spec.attributes)
        try:
            await (self.spec.kind.run if self.active else run_noop)(self, attrs)
        except (ConnectionError, OSError):
            self.link.conn.close()
        except Exception:
            log.exception("toxic %s failed; closing connection", self.spec.name)
            self.link.conn.close()

    async def stop(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
            await asyncio.wait([self.task])

    def leftovers(self) -> list[Item]:
        items: list[Item] = [] if self.held is None else [self.held]
        self.held = None
        return items


class _Reader(_Node):
    def __init__(self, out: Channel) -> None:
        self.out = out


class Link:
    """One direction of a connection: ``source`` is read, ``dest`` is written."""

    def __init__(
        self, conn: Connection, direction: str, source: Side, dest: Side, chain: list[ToxicSpec]
    ) -> None:
        self.conn = conn
        self.direction = direction
        self.sink = Channel(16)
        self.reader = _Reader(self.sink)
        self.stages: list[Stage] = []
        self.source = source
        self.dest = dest
        assert dest.transport is not None, "a link joins two connected sockets"
        self._out = dest.transport
        self.eof = False
        self.tasks: list[asyncio.Task[None]] = []
        self._room: asyncio.Task[None] | None = None
        for spec in chain:
            self.append(spec)

    @property
    def direct(self) -> bool:
        """No toxic and nothing queued: bytes read go straight to ``dest``."""
        return not self.stages and not self.sink._items

    def start(self) -> None:
        self.tasks = [asyncio.get_running_loop().create_task(self._write())]

    def append(self, spec: ToxicSpec) -> None:
        stage = Stage(self, spec)
        stage.out = self.sink
        (self.stages[-1] if self.stages else self.reader).out = stage.inq
        self.stages.append(stage)
        stage.start()

    def _find(self, spec: ToxicSpec) -> int | None:
        for index, stage in enumerate(self.stages):
            if stage.spec is spec:
                return index
        return None

    async def remove(self, spec: ToxicSpec) -> None:
        index = self._find(spec)
        if index is None:
            return
        stage = self.stages[index]
        await stage.stop()
        # No await from here on: rewire and flush atomically.
        previous = self.stages[index - 1] if index > 0 else self.reader
        previous.out = stage.out
        leftovers = stage.leftovers() + stage.inq.kill()
        if stage.held_eof:
            leftovers.append(_EOF)
        self.stages.remove(stage)
        if spec.kind.closes_on_remove and stage.active:
            leftovers = [_EOF]  # the stream is corrupt after dropped data
        for item in leftovers:
            stage.out.force_put(item)

    async def restart(self, spec: ToxicSpec) -> None:
        """Interrupt a stage for new parameters: flush its chunk, re-roll toxicity."""
        index = self._find(spec)
        if index is None:
            return
        stage = self.stages[index]
        await stage.stop()
        for item in stage.leftovers():
            stage.out.force_put(item)
        if stage.held_eof:
            stage.held_eof = False
            stage.inq.push_front(_EOF)
        stage.start()

    # reading (called back by the source socket) --------------------------------
    def feed(self, data: memoryview) -> None:
        """Bytes read from ``source``: written to ``dest`` if direct, else queued."""
        if self.eof:
            return
        if not self.stages and not self.sink._items:  # direct: the hot path, kept short
            transport = self._out
            if transport.is_closing():
                self.conn.close()
                return
            transport.write(data)
            if transport.get_write_buffer_size():
                self.source.buffers.renew_direct()  # the transport may hold a view of it
            return
        now = asyncio.get_running_loop().time()
        target = self.reader.out
        for start in range(0, len(data), CHUNK_SIZE):
            target.force_put(Chunk(bytes(data[start : start + CHUNK_SIZE]), now))
        if not target.writable:
            self.source.pause("queue")
            if self._room is None:
                self._room = asyncio.get_running_loop().create_task(self._wait_for_room())

    async def _wait_for_room(self) -> None:
        """Resume reading once the channel the reader feeds (whichever it is now) has room."""
        while True:
            target = self.reader.out
            await target.wait_writable()
            if target is self.reader.out:
                break
        self._room = None
        self.source.resume("queue")

    def feed_eof(self) -> None:
        """End of stream (or a socket error) on ``source``: it travels down the chain."""
        if self.eof:
            return
        self.eof = True
        if self.direct:
            self.conn.close()
        else:
            self.reader.out.force_put(_EOF)

    # writing ------------------------------------------------------------------
    async def _write(self) -> None:
        while (item := await self.sink.get()) is not None:
            if self._out.is_closing():
                break
            self._out.write(item.data)
            await self.dest.drain()
        self.conn.close()

    def cancel(self) -> None:
        """The connection closed: read nothing more, stop every task."""
        self.eof = True
        for task in self.tasks:
            task.cancel()
        if self._room is not None:
            self._room.cancel()
        for stage in self.stages:
            if stage.task is not None:
                stage.task.cancel()


class Connection:
    """A client socket, its upstream socket, and the two links between them."""

    def __init__(self, serial: int, client: Side, upstream: Side, on_close: Any) -> None:
        self.serial = serial
        self.client = client
        self.upstream = upstream
        self.closed = False
        self._on_close = on_close
        self.links: dict[str, Link] = {}

    def start(self, toxics: list[ToxicSpec]) -> None:
        up = [t for t in toxics if t.direction == "upstream"]
        down = [t for t in toxics if t.direction == "downstream"]
        upstream = Link(self, "upstream", self.client, self.upstream, up)
        downstream = Link(self, "downstream", self.upstream, self.client, down)
        self.links = {"upstream": upstream, "downstream": downstream}
        self.client.attach(upstream, downstream)
        self.upstream.attach(downstream, upstream)
        for link in self.links.values():
            link.start()
        for side in (self.client, self.upstream):
            side.resume("setup")

    def close(self, *, reset: bool = False) -> None:
        """Close both sockets (with an RST if ``reset``) and stop every task."""
        if self.closed:
            return
        self.closed = True
        for link in self.links.values():
            link.cancel()
        for side in (self.client, self.upstream):
            transport = side.transport
            if transport is None:
                continue
            if reset:
                sock = transport.get_extra_info("socket")
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                transport.abort()
            else:
                transport.close()
        self._on_close(self)
