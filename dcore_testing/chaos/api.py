"""HTTP routes of the Toxiproxy API: decoding, validation, status codes, bodies.

Byte-compatible with Toxiproxy v2.12.0 where that matters to clients: the same
routes, status codes (201 create, 200 toxic create, 204 deletes), error bodies
``{"error":…,"status":…}\\n`` served as ``text/plain`` (``application/json`` only
for ``/populate``), request ids on matched routes, the browser block, and Go's
JSON decode messages. Every mutation runs under one lock, so concurrent requests
see the same serial order the real server's mutexes give.

Differences: attribute values that crash the real server get 400 (see
:mod:`.toxics`); listen and upstream addresses that are not loopback get 400
unless the server allows remote ones (see :mod:`.addresses`); ``/populate``
entries accept ``toxics``; there is no ``/metrics`` (as the real server without
``-proxy-metrics``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Awaitable, Callable
from typing import Any

from . import gojson
from .http import Request, Response
from .http import error_response as http_error
from .registry import (
    INVALID_STREAM,
    INVALID_TYPE,
    TOXIC_EXISTS,
    TOXIC_NOT_FOUND,
    ApiError,
    PopulateError,
    ProxyInput,
    Registry,
    ToxicInput,
    fail,
)
from .toxics import KINDS, validate_toxicity

log = logging.getLogger(__name__)

VERSION = "2.12.0"  # a release build's version has no leading "v"
HANDLER_TIMEOUT = 25.0
_XID_ALPHABET = "0123456789abcdefghijklmnopqrstuv"

PROXY_FIELDS: dict[str, gojson.GoType] = {
    "name": "string",
    "listen": "string",
    "upstream": "string",
    "enabled": "bool",
}
TOXIC_FIELDS: dict[str, gojson.GoType] = {
    "name": "string",
    "type": "string",
    "stream": "string",
    "toxicity": "float32",
}

Route = Callable[[Request, dict[str, str]], Awaitable[Response]]


def json_response(value: Any, status: int = 200) -> Response:
    return Response(status, gojson.dumps(value), [("Content-Type", "application/json")])


def error_response(error: ApiError) -> Response:
    return http_error(error.message, error.status)


def _decode(body: bytes) -> Any:
    try:
        return gojson.decode_first_value(body)
    except gojson.GoJSONError as exc:
        raise ApiError(f"bad request body: {exc}", 400) from None


def _struct(
    value: Any, struct: str, fields: dict[str, gojson.GoType], into: dict[str, Any]
) -> dict[str, Any]:
    try:
        return gojson.decode_struct(value, struct, fields, into, value_type=f"toxiproxy.{struct}")
    except gojson.GoJSONError as exc:
        raise ApiError(f"bad request body: {exc}", 400) from None


def parse_toxic(value: Any, taken: set[str]) -> ToxicInput:
    """Validate a toxic definition in the real server's order, then our extra checks."""
    wrapper = _struct(
        value, "ToxicWrapper", TOXIC_FIELDS, {"stream": "downstream", "toxicity": 1.0}
    )
    raw_attrs = value.get("attributes") if isinstance(value, dict) else None
    if raw_attrs is not None and not isinstance(raw_attrs, dict):
        raise ApiError(
            f"bad request body: json: cannot unmarshal {gojson.json_kind(raw_attrs)} "
            "into Go struct field ToxicWrapper.attributes of type toxics.Toxic",
            400,
        )
    stream = str(wrapper["stream"])
    if stream.lower() not in ("upstream", "downstream"):
        raise fail(INVALID_STREAM)
    toxic_type = str(wrapper.get("type", ""))
    name = str(wrapper.get("name") or f"{toxic_type}_{stream}")
    toxic_kind = KINDS.get(toxic_type)
    if toxic_kind is None:
        raise fail(INVALID_TYPE)
    if name in taken:
        raise fail(TOXIC_EXISTS)
    fields = dict(toxic_kind.fields)
    attributes = _struct(raw_attrs, toxic_kind.struct, fields, dict.fromkeys(fields, 0))
    toxicity = float(wrapper["toxicity"])
    problem = validate_toxicity(toxicity) or toxic_kind.validate(attributes)
    if problem:
        raise ApiError(f"invalid toxic {name!r}: {problem}", 400)
    return ToxicInput(name, toxic_type, stream, toxicity, attributes)


def _request_id() -> str:
    return "".join(_XID_ALPHABET[b & 31] for b in os.urandom(20))


class Api:
    """Routes requests to a :class:`Registry`."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._lock = asyncio.Lock()
        self._routes: list[tuple[re.Pattern[str], dict[str, Route]]] = [
            (re.compile(r"/reset"), {"POST": self.reset}),
            (re.compile(r"/proxies"), {"GET": self.proxy_index, "POST": self.proxy_create}),
            (re.compile(r"/populate"), {"POST": self.populate}),
            (
                re.compile(r"/proxies/(?P<proxy>[^/]+)"),
                {
                    "GET": self.proxy_show,
                    "POST": self.proxy_update,
                    "PATCH": self.proxy_update,
                    "DELETE": self.proxy_delete,
                },
            ),
            (
                re.compile(r"/proxies/(?P<proxy>[^/]+)/toxics"),
                {"GET": self.toxic_index, "POST": self.toxic_create},
            ),
            (
                re.compile(r"/proxies/(?P<proxy>[^/]+)/toxics/(?P<toxic>[^/]+)"),
                {
                    "GET": self.toxic_show,
                    "POST": self.toxic_update,
                    "PATCH": self.toxic_update,
                    "DELETE": self.toxic_delete,
                },
            ),
            (re.compile(r"/version"), {"GET": self.version}),
        ]

    async def handle(self, request: Request) -> Response:
        for pattern, methods in self._routes:
            match = pattern.fullmatch(request.path)
            if match is None:
                continue
            route = methods.get(request.method)
            if route is None:
                return Response(405)
            response = await self._run(route, request, match.groupdict())
            response.headers.append(("X-Toxiproxy-Request-Id", _request_id()))
            return response
        return Response(
            404,
            b"404 page not found\n",
            [("Content-Type", "text/plain; charset=utf-8"), ("X-Content-Type-Options", "nosniff")],
        )

    async def _run(self, route: Route, request: Request, params: dict[str, str]) -> Response:
        if request.headers.get("user-agent", "").startswith("Mozilla/"):
            return Response(
                403,
                b"User agent not allowed\n",
                [
                    ("Content-Type", "text/plain; charset=utf-8"),
                    ("X-Content-Type-Options", "nosniff"),
                ],
            )

        async def locked() -> Response:
            async with self._lock:
                try:
                    return await route(request, params)
                except ApiError as exc:
                    return error_response(exc)
                except Exception as exc:  # a bug here must not take the server down
                    log.exception("%s %s failed", request.method, request.path)
                    return error_response(ApiError(f"{type(exc).__name__}: {exc}", 500))

        task = asyncio.ensure_future(locked())
        try:
            return await asyncio.wait_for(asyncio.shield(task), HANDLER_TIMEOUT)
        except TimeoutError:
            return Response(503)  # like http.TimeoutHandler; the operation carries on

    # proxies ----------------------------------------------------------------
    async def proxy_index(self, request: Request, params: dict[str, str]) -> Response:
        proxies = self.registry.proxies
        return json_response({name: proxies[name].to_json() for name in sorted(proxies)})

    async def proxy_create(self, request: Request, params: dict[str, str]) -> Response:
        data = _struct(_decode(request.body), "Proxy", PROXY_FIELDS, {"enabled": True})
        for required in ("name", "upstream"):
            if not data.get(required):
                raise ApiError(f"missing required field: {required}", 400)
        spec = ProxyInput(data["name"], data.get("listen", ""), data["upstream"], data["enabled"])
        proxy = await self.registry.create(spec)
        return json_response(proxy.to_json(), 201)

    async def populate(self, request: Request, params: dict[str, str]) -> Response:
        try:
            entries = self._populate_entries(_decode(request.body))
        except ApiError as exc:
            return self._populate_response(exc, None)
        try:
            proxies = await self.registry.populate(entries)
        except PopulateError as exc:
            return self._populate_response(exc.error, [p.to_json() for p in exc.done] or None)
        return json_response({"proxies": [p.to_json() for p in proxies] or None}, 201)

    @staticmethod
    def _populate_response(error: ApiError, done: list[Any] | None) -> Response:
        body = {"error": error.message, "status": error.status, "proxies": done}
        return json_response(body, error.status)

    @staticmethod
    def _populate_entries(value: Any) -> list[ProxyInput]:
        if not isinstance(value, list):
            kind = gojson.json_kind(value)
            raise ApiError(
                f"bad request body: json: cannot unmarshal {kind} into Go value of type "
                '[]struct { toxiproxy.Proxy; Enabled *bool "json:\\"enabled\\"" }',
                400,
            )
        decoded = [_struct(item, "Proxy", PROXY_FIELDS, {"enabled": True}) for item in value]
        for index, data in enumerate(decoded, start=1):
            for required in ("name", "upstream"):
                if not data.get(required):
                    raise ApiError(f"missing required field: {required} at proxy {index}", 400)
        entries = []
        for item, data in zip(value, decoded, strict=True):
            raw_toxics = item.get("toxics") if isinstance(item, dict) else None
            if raw_toxics is not None and not isinstance(raw_toxics, list):
                raise ApiError(
                    f"bad request body: toxics of proxy {data['name']!r} must be an array", 400
                )
            taken: set[str] = set()
            toxics = []
            for raw in raw_toxics or []:
                toxic = parse_toxic(raw, taken)
                taken.add(toxic.name)
                toxics.append(toxic)
            entries.append(
                ProxyInput(
                    data["name"], data.get("listen", ""), data["upstream"], data["enabled"], toxics
                )
            )
        return entries

    async def proxy_show(self, request: Request, params: dict[str, str]) -> Response:
        return json_response(self.registry.get(params["proxy"]).to_json())

    async def proxy_update(self, request: Request, params: dict[str, str]) -> Response:
        proxy = self.registry.get(params["proxy"])
        current = {"listen": proxy.listen, "upstream": proxy.upstream, "enabled": proxy.enabled}
        data = _struct(_decode(request.body), "Proxy", PROXY_FIELDS, current)
        await self.registry.update(proxy, data["listen"], data["upstream"], data["enabled"])
        return json_response(proxy.to_json())

    async def proxy_delete(self, request: Request, params: dict[str, str]) -> Response:
        await self.registry.delete(params["proxy"])
        return Response(204)

    # toxics -----------------------------------------------------------------
    async def toxic_index(self, request: Request, params: dict[str, str]) -> Response:
        proxy = self.registry.get(params["proxy"])
        return json_response([t.to_json() for t in proxy.ordered_toxics()])

    async def toxic_create(self, request: Request, params: dict[str, str]) -> Response:
        proxy = self.registry.get(params["proxy"])
        toxic = parse_toxic(_decode(request.body), {t.name for t in proxy.toxics})
        spec = self.registry.add_toxic(proxy, toxic)
        return json_response(spec.to_json())

    async def toxic_show(self, request: Request, params: dict[str, str]) -> Response:
        proxy = self.registry.get(params["proxy"])
        spec = proxy.find_toxic(params["toxic"])
        if spec is None:
            raise fail(TOXIC_NOT_FOUND)
        return json_response(spec.to_json())

    async def toxic_update(self, request: Request, params: dict[str, str]) -> Response:
        proxy = self.registry.get(params["proxy"])
        spec = proxy.find_toxic(params["toxic"])
        if spec is None:
            raise fail(TOXIC_NOT_FOUND)
        value = _decode(request.body)
        fields: dict[str, gojson.GoType] = {"toxicity": "float32"}
        toxicity = _struct(value, "ToxicWrapper", fields, {"toxicity": spec.toxicity})["toxicity"]
        raw_attrs = value.get("attributes") if isinstance(value, dict) else None
        kind = spec.kind
        attributes = _struct(raw_attrs, kind.struct, dict(kind.fields), spec.attributes)
        problem = validate_toxicity(float(toxicity)) or kind.validate(attributes)
        if problem:
            raise ApiError(f"invalid toxic {spec.name!r}: {problem}", 400)
        await self.registry.update_toxic(proxy, spec, attributes, float(toxicity))
        return json_response(spec.to_json())

    async def toxic_delete(self, request: Request, params: dict[str, str]) -> Response:
        await self.registry.remove_toxic(self.registry.get(params["proxy"]), params["toxic"])
        return Response(204)

    # misc -------------------------------------------------------------------
    async def reset(self, request: Request, params: dict[str, str]) -> Response:
        await self.registry.reset()
        return Response(204)

    async def version(self, request: Request, params: dict[str, str]) -> Response:
        body = f'{{"version": "{VERSION}"}}\n'.encode()
        return Response(200, body, [("Content-Type", "application/json;charset=utf-8")])
