"""The HTTP API: every endpoint's success and documented errors, byte for byte."""

from __future__ import annotations

import json
import re
import socket

import httpx
import pytest

TEXT = "text/plain; charset=utf-8"
ID = "X-Toxiproxy-Request-Id"


def assert_error(response: httpx.Response, status: int, message: str) -> None:
    assert response.status_code == status
    assert response.headers["content-type"] == TEXT
    assert response.headers["x-content-type-options"] == "nosniff"
    expected = json.dumps({"error": message, "status": status}, separators=(",", ":"))
    assert response.content == expected.encode() + b"\n"


def create(
    api: httpx.Client, name: str = "p1", upstream: str = "127.0.0.1:1", **extra: object
) -> dict:
    response = api.post(
        "/proxies", json={"name": name, "listen": "127.0.0.1:0", "upstream": upstream, **extra}
    )
    assert response.status_code == 201, response.text
    return response.json()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- generic -------------------------------------------------------------------


def test_version_is_hand_formatted_json_with_request_id(api: httpx.Client) -> None:
    response = api.get("/version")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json;charset=utf-8"
    # a release build says its tag without the "v"; a dev build says "git"
    assert re.fullmatch(rb'\{"version": "(\d+\.\d+\.\d+|git)"\}\n', response.content)
    assert re.fullmatch(r"[0-9a-v]{20}", response.headers[ID])


def test_unknown_path_is_gorilla_404_without_request_id(api: httpx.Client) -> None:
    for path in ("/nope", "/proxies/", "/proxies/a/b/c/d"):
        response = api.get(path)
        assert response.status_code == 404
        assert response.headers["content-type"] == TEXT
        assert response.content == b"404 page not found\n"
        assert ID not in response.headers


def test_wrong_method_is_empty_405(api: httpx.Client) -> None:
    response = api.put("/proxies")
    assert response.status_code == 405
    assert response.content == b""
    assert ID not in response.headers
    assert api.delete("/version").status_code == 405


def test_browser_user_agent_is_refused_on_known_routes_only(api: httpx.Client) -> None:
    browser = {"User-Agent": "Mozilla/5.0 (X11)"}
    response = api.get("/proxies", headers=browser)
    assert response.status_code == 403
    assert response.headers["content-type"] == TEXT
    assert response.content == b"User agent not allowed\n"
    assert api.get("/elsewhere", headers=browser).status_code == 404


def test_server_keeps_serving_after_garbage_and_bad_input(api: httpx.Client) -> None:
    host, port = api.base_url.host, api.base_url.port
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 400 Bad Request")
    for body in (b"{", b"[1,", b"\xff\xfe", b'{"name": 5}', b"null"):
        assert api.post("/proxies", content=body).status_code == 400
    assert api.post("/proxies/x/toxics", content=b"{").status_code == 404
    assert api.get("/version").status_code == 200


# -- proxies -------------------------------------------------------------------


def test_proxy_create_returns_201_with_bound_listen_in_go_field_order(api: httpx.Client) -> None:
    response = api.post(
        "/proxies", json={"name": "p1", "listen": "127.0.0.1:0", "upstream": "127.0.0.1:9"}
    )
    assert response.status_code == 201
    assert response.headers["content-type"] == "application/json"
    assert re.fullmatch(
        rb'\{"name":"p1","listen":"127\.0\.0\.1:(\d+)","upstream":"127\.0\.0\.1:9",'
        rb'"enabled":true,("Logger":\{\},)?"toxics":\[\]\}',
        response.content,
    )
    port = int(response.json()["listen"].rsplit(":", 1)[1])
    assert port != 0
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass  # it is really listening


def test_proxy_created_disabled_keeps_raw_listen_and_does_not_bind(api: httpx.Client) -> None:
    port = free_port()
    body = create(api, listen=f"127.0.0.1:{port}", enabled=False)
    assert body["enabled"] is False
    assert body["listen"] == f"127.0.0.1:{port}"
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)
    raw = create(api, "p2", enabled=False)
    assert raw["listen"] == "127.0.0.1:0"


def test_proxy_index_is_an_object_keyed_by_sorted_name(api: httpx.Client) -> None:
    assert api.get("/proxies").json() == {}
    for name in ("zeta", "alpha", "mid"):
        create(api, name)
    response = api.get("/proxies")
    assert response.headers["content-type"] == "application/json"
    assert list(response.json()) == ["alpha", "mid", "zeta"]
    assert response.json()["mid"]["name"] == "mid"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "bad request body: EOF"),
        (b'{"name": "x", ', "bad request body: unexpected EOF"),
        (
            b'{"name": 5}',
            "bad request body: json: cannot unmarshal number "
            "into Go struct field Proxy.name of type string",
        ),
        (
            b'{"name": "x", "enabled": "yes", "upstream": "h:1"}',
            "bad request body: json: cannot unmarshal string "
            "into Go struct field Proxy.enabled of type bool",
        ),
        (b'{"upstream": "h:1"}', "missing required field: name"),
        (b'{"name": "x"}', "missing required field: upstream"),
        (b'{"name": "", "upstream": "h:1"}', "missing required field: name"),
    ],
)
def test_proxy_create_rejects_bad_bodies_with_400(
    api: httpx.Client, body: bytes, message: str
) -> None:
    assert_error(api.post("/proxies", content=body), 400, message)
    assert api.get("/proxies").json() == {}


def test_proxy_create_ignores_unknown_fields_and_matches_keys_case_insensitively(
    api: httpx.Client,
) -> None:
    response = api.post(
        "/proxies", json={"NAME": "ci", "Upstream": "h:1", "listen": "127.0.0.1:0", "extra": [1]}
    )
    assert response.status_code == 201
    assert response.json()["name"] == "ci"


def test_proxy_create_duplicate_name_is_409_before_binding(api: httpx.Client) -> None:
    create(api, "dup")
    assert_error(
        api.post("/proxies", json={"name": "dup", "upstream": "h:1"}), 409, "proxy already exists"
    )


def test_proxy_create_on_used_port_is_500_and_not_added(api: httpx.Client) -> None:
    listen = create(api, "first")["listen"]
    response = api.post("/proxies", json={"name": "second", "listen": listen, "upstream": "h:1"})
    assert_error(response, 500, f"listen tcp {listen}: bind: address already in use")
    assert "second" not in api.get("/proxies").json()
    assert_error(
        api.post("/proxies", json={"name": "bad", "listen": "127.0.0.1:99999", "upstream": "h:1"}),
        500,
        "listen tcp: address 99999: invalid port",
    )


def test_proxy_show_and_not_found(api: httpx.Client) -> None:
    created = create(api, "shown")
    response = api.get("/proxies/shown")
    assert response.status_code == 200
    assert response.json() == created
    assert_error(api.get("/proxies/missing"), 404, "proxy not found")


def test_proxy_update_disable_enable_keeps_bound_listen(api: httpx.Client) -> None:
    listen = create(api, "u")["listen"]
    response = api.patch("/proxies/u", json={"enabled": False})
    assert response.status_code == 200
    assert response.json()["enabled"] is False
    assert response.json()["listen"] == listen
    response = api.post("/proxies/u", json={"enabled": True})  # deprecated POST still works
    assert response.json()["enabled"] is True
    assert response.json()["listen"] == listen


def test_proxy_update_missing_fields_default_to_current_and_name_is_ignored(
    api: httpx.Client,
) -> None:
    listen = create(api, "u", upstream="127.0.0.1:1")["listen"]
    response = api.patch("/proxies/u", json={"upstream": "127.0.0.1:2", "name": "ignored"})
    body = response.json()
    assert body["name"] == "u"
    assert body["upstream"] == "127.0.0.1:2"
    assert body["listen"] == listen  # same address, restarted on it
    assert body["enabled"] is True


def test_proxy_update_errors(api: httpx.Client) -> None:
    create(api, "u")
    assert_error(api.patch("/proxies/missing", json={}), 404, "proxy not found")
    assert_error(api.patch("/proxies/u", content=b""), 400, "bad request body: EOF")
    assert_error(
        api.patch("/proxies/u", json={"listen": "nonsense"}),
        500,
        "address nonsense: missing port in address",
    )


def test_proxy_delete_is_204_then_404_and_frees_the_port(api: httpx.Client) -> None:
    listen = create(api, "gone")["listen"]
    response = api.delete("/proxies/gone")
    assert response.status_code == 204
    assert response.content == b""
    assert "content-type" not in response.headers
    assert_error(api.delete("/proxies/gone"), 404, "proxy not found")
    host, port = listen.rsplit(":", 1)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((host, int(port)), timeout=5)


# -- toxics --------------------------------------------------------------------


def test_toxic_create_is_200_with_defaults_and_all_attributes(api: httpx.Client) -> None:
    create(api, "t")
    response = api.post("/proxies/t/toxics", json={"type": "latency", "attributes": {"latency": 5}})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.content == (
        b'{"attributes":{"latency":5,"jitter":0},"name":"latency_downstream",'
        b'"type":"latency","stream":"downstream","toxicity":1}'
    )
    slicer = api.post(
        "/proxies/t/toxics", json={"type": "slicer", "attributes": {"average_size": 3}}
    ).json()
    assert slicer["attributes"] == {"average_size": 3, "size_variation": 0, "delay": 0}
    noop = api.post("/proxies/t/toxics", json={"type": "noop", "toxicity": 0.5}).json()
    assert noop["attributes"] == {}
    assert noop["toxicity"] == 0.5


def test_toxic_stream_is_echoed_as_sent_and_names_default_from_it(api: httpx.Client) -> None:
    create(api, "t")
    body = api.post("/proxies/t/toxics", json={"type": "latency", "stream": "UPSTREAM"}).json()
    assert body["stream"] == "UPSTREAM"
    assert body["name"] == "latency_UPSTREAM"


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (
            {"type": "latency", "stream": "sideways"},
            400,
            "stream was invalid, can be either upstream or downstream",
        ),
        (
            {"type": "latency", "stream": ""},
            400,
            "stream was invalid, can be either upstream or downstream",
        ),
        ({"type": "nope"}, 400, "invalid toxic type"),
        ({"stream": "upstream"}, 400, "invalid toxic type"),
        (
            {"type": "latency", "attributes": {"latency": "x"}},
            400,
            "bad request body: json: cannot unmarshal string "
            "into Go struct field LatencyToxic.latency of type int64",
        ),
        (
            {"type": "latency", "toxicity": "high"},
            400,
            "bad request body: json: cannot unmarshal string "
            "into Go struct field ToxicWrapper.toxicity of type float32",
        ),
    ],
)
def test_toxic_create_rejects_bad_input(
    api: httpx.Client, body: dict, status: int, message: str
) -> None:
    create(api, "t")
    assert_error(api.post("/proxies/t/toxics", json=body), status, message)
    assert api.get("/proxies/t/toxics").json() == []


def test_toxic_create_errors_for_body_and_proxy(api: httpx.Client) -> None:
    create(api, "t")
    assert_error(api.post("/proxies/t/toxics", content=b""), 400, "bad request body: EOF")
    assert_error(api.post("/proxies/none/toxics", json={"type": "noop"}), 404, "proxy not found")


def test_toxic_names_are_unique_across_streams(api: httpx.Client) -> None:
    create(api, "t")
    api.post("/proxies/t/toxics", json={"type": "latency", "name": "x", "stream": "upstream"})
    response = api.post(
        "/proxies/t/toxics", json={"type": "noop", "name": "x", "stream": "downstream"}
    )
    assert_error(response, 409, "toxic already exists")


def test_toxic_index_lists_upstream_then_downstream_in_insertion_order(api: httpx.Client) -> None:
    create(api, "t")
    for name, stream in (
        ("d1", "downstream"),
        ("u1", "upstream"),
        ("d2", "downstream"),
        ("u2", "upstream"),
    ):
        api.post("/proxies/t/toxics", json={"type": "noop", "name": name, "stream": stream})
    names = [t["name"] for t in api.get("/proxies/t/toxics").json()]
    assert names == ["u1", "u2", "d1", "d2"]
    assert [t["name"] for t in api.get("/proxies/t").json()["toxics"]] == names
    assert_error(api.get("/proxies/none/toxics"), 404, "proxy not found")


def test_toxic_show_and_not_found(api: httpx.Client) -> None:
    create(api, "t")
    created = api.post(
        "/proxies/t/toxics", json={"type": "timeout", "attributes": {"timeout": 9}}
    ).json()
    assert api.get("/proxies/t/toxics/timeout_downstream").json() == created
    assert_error(api.get("/proxies/t/toxics/none"), 404, "toxic not found")


def test_toxic_update_merges_attributes_and_ignores_identity_fields(api: httpx.Client) -> None:
    create(api, "t")
    api.post(
        "/proxies/t/toxics",
        json={"type": "latency", "toxicity": 0.5, "attributes": {"latency": 100, "jitter": 5}},
    )
    response = api.patch(
        "/proxies/t/toxics/latency_downstream",
        json={
            "attributes": {"jitter": 1},
            "name": "renamed",
            "type": "bandwidth",
            "stream": "upstream",
        },
    )
    assert response.status_code == 200
    assert response.json() == {
        "attributes": {"latency": 100, "jitter": 1},
        "name": "latency_downstream",
        "type": "latency",
        "stream": "downstream",
        "toxicity": 0.5,
    }
    response = api.post("/proxies/t/toxics/latency_downstream", json={"toxicity": 0.25})
    assert response.json()["toxicity"] == 0.25
    assert response.json()["attributes"]["latency"] == 100


def test_toxic_update_errors(api: httpx.Client) -> None:
    create(api, "t")
    api.post("/proxies/t/toxics", json={"type": "noop"})
    assert_error(
        api.patch("/proxies/t/toxics/noop_downstream", content=b""), 400, "bad request body: EOF"
    )
    assert_error(api.patch("/proxies/t/toxics/none", content=b""), 404, "toxic not found")
    assert_error(api.patch("/proxies/none/toxics/x", json={}), 404, "proxy not found")


def test_toxic_delete_is_204_then_404(api: httpx.Client) -> None:
    create(api, "t")
    api.post("/proxies/t/toxics", json={"type": "noop"})
    response = api.delete("/proxies/t/toxics/noop_downstream")
    assert response.status_code == 204
    assert response.content == b""
    assert_error(api.delete("/proxies/t/toxics/noop_downstream"), 404, "toxic not found")
    assert api.get("/proxies/t/toxics").json() == []


def test_toxic_on_disabled_proxy_is_accepted(api: httpx.Client) -> None:
    create(api, "t", enabled=False)
    assert api.post("/proxies/t/toxics", json={"type": "noop"}).status_code == 200


# -- populate and reset ----------------------------------------------------------


def test_populate_creates_proxies_with_201(api: httpx.Client) -> None:
    response = api.post(
        "/populate",
        json=[
            {"name": "a", "listen": "127.0.0.1:0", "upstream": "h:1"},
            {"name": "b", "listen": "127.0.0.1:0", "upstream": "h:2", "enabled": False},
        ],
    )
    assert response.status_code == 201
    assert response.headers["content-type"] == "application/json"
    proxies = response.json()["proxies"]
    assert [p["name"] for p in proxies] == ["a", "b"]
    assert [p["enabled"] for p in proxies] == [True, False]


def test_populate_empty_array_gives_null_proxies(api: httpx.Client) -> None:
    response = api.post("/populate", json=[])
    assert response.status_code == 201
    assert response.content == b'{"proxies":null}'


def test_populate_errors_are_json_with_proxies_key(api: httpx.Client) -> None:
    response = api.post("/populate", json={"name": "a"})
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["status"] == 400
    assert body["error"].startswith(
        "bad request body: json: cannot unmarshal object into Go value of type []"
    )
    assert body["proxies"] is None

    response = api.post(
        "/populate", json=[{"name": "ok", "upstream": "h:1"}, {"name": "", "upstream": "h:1"}]
    )
    assert response.json() == {
        "error": "missing required field: name at proxy 2",
        "status": 400,
        "proxies": None,
    }
    assert api.get("/proxies").json() == {}  # validated before anything changes


def test_populate_stops_at_a_bind_failure_and_reports_done_so_far(api: httpx.Client) -> None:
    used = create(api, "holder")["listen"]
    response = api.post(
        "/populate",
        json=[
            {"name": "first", "listen": "127.0.0.1:0", "upstream": "h:1"},
            {"name": "clash", "listen": used, "upstream": "h:1"},
            {"name": "never", "listen": "127.0.0.1:0", "upstream": "h:1"},
        ],
    )
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["error"] == f"listen tcp {used}: bind: address already in use"
    assert [p["name"] for p in body["proxies"]] == ["first"]
    assert set(api.get("/proxies").json()) == {"holder", "first"}


def test_populate_leaves_an_unchanged_proxy_untouched(api: httpx.Client) -> None:
    listen = create(api, "same", upstream="h:1")["listen"]
    api.post("/proxies/same/toxics", json={"type": "noop"})
    api.patch("/proxies/same", json={"enabled": False})
    response = api.post(
        "/populate", json=[{"name": "same", "listen": listen, "upstream": "h:1", "enabled": True}]
    )
    proxy = response.json()["proxies"][0]
    assert proxy["enabled"] is False
    assert [t["name"] for t in proxy["toxics"]] == ["noop_downstream"]


def test_populate_replaces_a_changed_proxy_and_drops_its_toxics(api: httpx.Client) -> None:
    create(api, "chg", upstream="h:1")
    create(api, "other")
    api.post("/proxies/chg/toxics", json={"type": "noop"})
    response = api.post(
        "/populate", json=[{"name": "chg", "listen": "127.0.0.1:0", "upstream": "h:2"}]
    )
    proxy = response.json()["proxies"][0]
    assert proxy["upstream"] == "h:2"
    assert proxy["toxics"] == []
    assert "other" in api.get("/proxies").json()  # proxies missing from the list stay


def test_reset_enables_proxies_removes_toxics_and_keeps_proxies(api: httpx.Client) -> None:
    create(api, "r1")
    create(api, "r2")
    api.post("/proxies/r1/toxics", json={"type": "latency", "stream": "upstream"})
    api.patch("/proxies/r2", json={"enabled": False})
    response = api.post("/reset")
    assert response.status_code == 204
    assert response.content == b""
    proxies = api.get("/proxies").json()
    assert set(proxies) == {"r1", "r2"}
    assert all(p["enabled"] and p["toxics"] == [] for p in proxies.values())


# -- embedded-only differences ---------------------------------------------------


@pytest.mark.usefixtures("embedded_only")
@pytest.mark.parametrize(
    "body",
    [
        {"type": "slicer"},
        {"type": "slicer", "attributes": {"average_size": 10, "size_variation": 11}},
        {"type": "bandwidth", "attributes": {"rate": 0}},
        {"type": "bandwidth", "attributes": {"rate": -5}},
        {"type": "latency", "attributes": {"latency": -1}},
        {"type": "latency", "attributes": {"latency": 1, "jitter": -1}},
        {"type": "timeout", "attributes": {"timeout": -1}},
        {"type": "limit_data", "attributes": {"bytes": -1}},
        {"type": "noop", "toxicity": 7},
        {"type": "noop", "toxicity": -0.5},
    ],
)
def test_embedded_rejects_values_that_break_the_real_server(api: httpx.Client, body: dict) -> None:
    create(api, "v")
    response = api.post("/proxies/v/toxics", json=body)
    assert response.status_code == 400
    assert response.headers["content-type"] == TEXT
    assert response.json()["error"].startswith("invalid toxic")
    assert api.get("/proxies/v/toxics").json() == []


@pytest.mark.usefixtures("embedded_only")
def test_embedded_validates_toxic_updates_too(api: httpx.Client) -> None:
    create(api, "v")
    api.post("/proxies/v/toxics", json={"type": "bandwidth", "attributes": {"rate": 10}})
    response = api.patch("/proxies/v/toxics/bandwidth_downstream", json={"attributes": {"rate": 0}})
    assert response.status_code == 400
    assert api.get("/proxies/v/toxics/bandwidth_downstream").json()["attributes"]["rate"] == 10


@pytest.mark.usefixtures("embedded_only")
def test_embedded_populate_accepts_toxics(api: httpx.Client) -> None:
    response = api.post(
        "/populate",
        json=[
            {
                "name": "withtox",
                "listen": "127.0.0.1:0",
                "upstream": "h:1",
                "toxics": [
                    {"type": "latency", "attributes": {"latency": 7}},
                    {"type": "blackhole", "stream": "upstream"},
                ],
            }
        ],
    )
    assert response.status_code == 201
    names = [t["name"] for t in api.get("/proxies/withtox/toxics").json()]
    assert names == ["blackhole_upstream", "latency_downstream"]
    bad = api.post(
        "/populate",
        json=[{"name": "x", "upstream": "h:1", "toxics": [{"type": "slicer"}]}],
    )
    assert bad.status_code == 400
    assert "x" not in api.get("/proxies").json()
