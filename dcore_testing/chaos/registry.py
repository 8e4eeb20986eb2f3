"""The proxy collection: create, update, delete, populate, reset, and toxic CRUD.

Semantics follow Toxiproxy v2.12.0's ``proxy_collection.go``, ``proxy.go`` and
``toxic_collection.go``; inputs arrive already decoded and type-checked by
:mod:`.api`, and failures are :class:`ApiError` with the real message and status.
All methods run on the server loop and are serialised by the API's lock.

Differences: ``populate`` entries may carry ``"toxics": [...]``; they are applied
when the entry creates or replaces a proxy (an untouched proxy keeps its toxics).
Unless ``allow_remote`` is set, a listen or upstream address that is not loopback
is refused with 400 before anything changes (see :mod:`.addresses`).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field

from .addresses import ProxyError, canonical, listen_problem, upstream_problem
from .proxy import Proxy
from .toxics import KINDS, ToxicSpec, derive_seed


class ApiError(Exception):
    """An error the API reports as ``{"error": message, "status": status}``."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


PROXY_NOT_FOUND = ("proxy not found", 404)
PROXY_EXISTS = ("proxy already exists", 409)
INVALID_STREAM = ("stream was invalid, can be either upstream or downstream", 400)
INVALID_TYPE = ("invalid toxic type", 400)
TOXIC_EXISTS = ("toxic already exists", 409)
TOXIC_NOT_FOUND = ("toxic not found", 404)


def fail(error: tuple[str, int]) -> ApiError:
    return ApiError(*error)


@dataclass
class ToxicInput:
    """A validated toxic definition, ready to attach to a proxy."""

    name: str
    type: str
    stream: str
    toxicity: float
    attributes: dict[str, int]


@dataclass
class ProxyInput:
    name: str
    listen: str
    upstream: str
    enabled: bool = True
    toxics: list[ToxicInput] = field(default_factory=list)


class Registry:
    """All proxies of one server, by name, in creation order."""

    def __init__(self, seed: int | None = None, *, allow_remote: bool = False) -> None:
        self.seed = seed
        self.allow_remote = allow_remote
        self.proxies: dict[str, Proxy] = {}
        self._entropy = random.SystemRandom()

    def get(self, name: str) -> Proxy:
        proxy = self.proxies.get(name)
        if proxy is None:
            raise fail(PROXY_NOT_FOUND)
        return proxy

    async def _start(self, proxy: Proxy) -> None:
        try:
            await proxy.start()
        except ProxyError as exc:
            raise ApiError(str(exc), 500) from None

    async def check_addresses(self, name: str, listen: str, upstream: str) -> None:
        """400 if ``listen`` or ``upstream`` is not loopback and remote ones are not allowed."""
        if self.allow_remote:
            return
        problem = listen_problem(listen) or await upstream_problem(upstream)
        if problem:
            raise ApiError(f"proxy {name!r}: {problem}", 400)

    def _new(self, spec: ProxyInput) -> Proxy:
        return Proxy(spec.name, spec.listen, spec.upstream, allow_remote=self.allow_remote)

    async def create(self, spec: ProxyInput) -> Proxy:
        if spec.name in self.proxies:
            raise fail(PROXY_EXISTS)
        await self.check_addresses(spec.name, spec.listen, spec.upstream)
        proxy = self._new(spec)
        for toxic in spec.toxics:
            self._attach(proxy, toxic)
        if spec.enabled:
            await self._start(proxy)
        self.proxies[spec.name] = proxy
        return proxy

    async def update(self, proxy: Proxy, listen: str, upstream: str, enabled: bool) -> Proxy:
        """``Proxy.Update``: restart on an address change, then apply ``enabled``."""
        await self.check_addresses(proxy.name, listen, upstream)
        try:
            differs = canonical(listen) != proxy.listen or upstream != proxy.upstream
        except ProxyError as exc:
            raise ApiError(str(exc), 500) from None
        if differs:
            await proxy.stop()
            proxy.listen, proxy.upstream = listen, upstream
        if enabled != proxy.enabled:
            if enabled:
                await self._start(proxy)
            else:
                await proxy.stop()
        return proxy

    async def delete(self, name: str) -> None:
        proxy = self.get(name)
        await proxy.stop()
        del self.proxies[name]

    async def populate(self, entries: list[ProxyInput]) -> list[Proxy]:
        """``AddOrReplace`` each entry in order; raises ``(ApiError, done_so_far)``."""
        for entry in entries:  # before anything changes, like the other checks
            try:
                await self.check_addresses(entry.name, entry.listen, entry.upstream)
            except ApiError as exc:
                raise PopulateError(exc, []) from None
        done: list[Proxy] = []
        for entry in entries:
            try:
                done.append(await self._add_or_replace(entry))
            except ApiError as exc:
                raise PopulateError(exc, done) from None
        return done

    async def _add_or_replace(self, entry: ProxyInput) -> Proxy:
        existing = self.proxies.get(entry.name)
        if existing is not None:
            try:
                same = canonical(entry.listen) == existing.listen
            except ProxyError:
                same = entry.listen == existing.listen
            if same and entry.upstream == existing.upstream:
                return existing
            await existing.stop()
        proxy = self._new(entry)
        for toxic in entry.toxics:
            self._attach(proxy, toxic)
        if entry.enabled:
            await self._start(proxy)
        self.proxies[entry.name] = proxy
        return proxy

    async def reset(self) -> None:
        """Re-enable every proxy and remove every toxic (as DELETE would)."""
        for proxy in list(self.proxies.values()):
            await self._start(proxy)
            for toxic in list(proxy.toxics):
                await proxy.remove_toxic(toxic)

    # toxics ---------------------------------------------------------------
    def _attach(self, proxy: Proxy, toxic: ToxicInput) -> ToxicSpec:
        if proxy.find_toxic(toxic.name) is not None:
            raise fail(TOXIC_EXISTS)
        if self.seed is None:
            seed = self._entropy.getrandbits(64)
        else:
            seed = derive_seed(self.seed, proxy.name, toxic.name)
        spec = ToxicSpec(
            toxic.name, KINDS[toxic.type], toxic.stream, toxic.toxicity, toxic.attributes, seed
        )
        proxy.add_toxic(spec)
        return spec

    def add_toxic(self, proxy: Proxy, toxic: ToxicInput) -> ToxicSpec:
        return self._attach(proxy, toxic)

    async def update_toxic(
        self, proxy: Proxy, spec: ToxicSpec, attributes: Mapping[str, int], toxicity: float
    ) -> ToxicSpec:
        spec.attributes = dict(attributes)
        spec.toxicity = toxicity
        await proxy.restart_toxic(spec)
        return spec

    async def remove_toxic(self, proxy: Proxy, name: str) -> None:
        spec = proxy.find_toxic(name)
        if spec is None:
            raise fail(TOXIC_NOT_FOUND)
        await proxy.remove_toxic(spec)

    async def close(self) -> None:
        for proxy in self.proxies.values():
            await proxy.stop()


class PopulateError(Exception):
    """A populate failure, carrying the proxies handled before it."""

    def __init__(self, error: ApiError, done: list[Proxy]) -> None:
        super().__init__(error.message)
        self.error = error
        self.done = done
