"""Benchmark the pipeline runner against nested closures, pluggy and Starlette.

Run: ``python benchmarks/bench_pipeline.py [--quick] [--instructions]``.

Every variant handles one request over a context made before the timer starts, and
each stage passes the context on untouched, so what is measured is the machinery:

* **strict baseline**: ten nested plain closures (``return next_call(ctx)``), the least
  any chain of ten stages can cost;
* the **lenient baseline** this benchmark used before (ten closures each doing
  ``ctx.count += 1`` on the Pydantic context, which costs more than the pipeline's own
  overhead), printed beside it for comparison with older figures;
* **built once, run repeatedly**: a 10-stage pipeline built once, ``run(ctx)`` per
  request (target: at most 4x the strict baseline);
* **build + run per request**: ``create_pipeline`` + 10 ``chain()`` + ``run()`` per
  request (target: at most 30x the strict baseline; stretch 15x), with a plugin that
  gets an instance per pipeline (the default) and with one declared ``shareable``;
* **copy + run per request**: a pipeline built once, ``copy().run(ctx)`` per request
  (a pipeline of its own, its stages not checked again);
* anchors, when installed: pluggy calling a hook through 10 new-style wrappers, a
  Starlette app with 10 pure-ASGI middlewares (one request through the app: error and
  exception middleware, router, endpoint, response), and the 10 middlewares alone.
  ASGI coroutines are driven with ``send(None)``: nothing awaits I/O, so no event loop
  is needed and its cost is not counted.

Rounds interleave the variants (a burst of load elsewhere on the machine hits all of them
alike); the table prints the min and the median over rounds and their ratios to the
strict baseline's. ``--instructions`` reruns the variants under
callgrind (valgrind) and prints instructions per request, which machine load does not
move.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dcore import (  # after the path set-up, so the checkout's dcore is the one used
    DcoreSettings,
    Environment,
    Execute,
    NextFn,
    Pipeline,
    PipelineContext,
    register_plugin,
    use_environment,
    use_registry,
)
from dcore._plugins.registry import default_registry

STAGES = 10
Request = Callable[[], Any]


class BenchContext(PipelineContext):
    count: int = 0


class PassThrough(Execute[BenchContext]):
    """The stage under test: continue with the context untouched. One instance per
    pipeline (the default)."""

    def __init__(self, step: int = 1) -> None:
        self.step = step

    def execute(self, next_fn: NextFn[BenchContext], context: BenchContext) -> Any:
        return next_fn(context)


class SharedPassThrough(PassThrough):
    """The same stage, declared shareable: pipelines compiled alike use one instance."""

    shareable = True


def core(ctx: BenchContext) -> str:
    return "done"


# -- the variants ---------------------------------------------------------------------------
def strict_closures() -> Callable[[BenchContext], Any]:
    """Ten nested plain closures: the least a chain of ten stages can cost."""

    def wrap(next_call: Callable[[BenchContext], Any]) -> Callable[[BenchContext], Any]:
        def call(ctx: BenchContext) -> Any:
            return next_call(ctx)

        return call

    call: Callable[[BenchContext], Any] = core
    for _ in range(STAGES):
        call = wrap(call)
    return call


def lenient_closures() -> Callable[[BenchContext], Any]:
    """This benchmark's former baseline: each closure increments a Pydantic field."""

    def wrap(next_call: Callable[[BenchContext], Any]) -> Callable[[BenchContext], Any]:
        def call(ctx: BenchContext) -> Any:
            ctx.count += 1
            return next_call(ctx)

        return call

    call: Callable[[BenchContext], Any] = core
    for _ in range(STAGES):
        call = wrap(call)
    return call


def build(ctx: BenchContext, plugin: str) -> Pipeline[BenchContext]:
    pipeline = ctx.create_pipeline(core)
    for _ in range(STAGES):
        pipeline.chain(Execute, plugin=plugin, step=1)
    return pipeline


def pluggy_request(ctx: BenchContext) -> Request | None:
    """pluggy: a hook whose implementation sits under 10 new-style wrappers."""
    try:
        import pluggy
    except ImportError:
        return None
    spec = pluggy.HookspecMarker("bench")
    impl = pluggy.HookimplMarker("bench")

    class Spec:
        @spec(firstresult=True)
        def handle(self, ctx: Any) -> Any: ...

    class Wrapper:
        @impl(wrapper=True)
        def handle(self, ctx: Any) -> Any:
            return (yield)

    class Core:
        @impl
        def handle(self, ctx: Any) -> Any:
            return core(ctx)

    manager = pluggy.PluginManager("bench")
    manager.add_hookspecs(Spec)
    manager.register(Core())
    for _ in range(STAGES):
        manager.register(Wrapper())
    hook = manager.hook.handle
    return lambda: hook(ctx=ctx)


def _drive(coroutine: Any) -> None:
    """Run a coroutine that never waits on I/O to its end, without an event loop."""
    try:
        coroutine.send(None)
    except StopIteration:
        return
    raise RuntimeError("the ASGI app waited for I/O; the benchmark cannot drive it")


class PassThroughMiddleware:
    """A pure-ASGI middleware that passes the request on untouched."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


def starlette_requests() -> tuple[Request, Request] | None:
    """Starlette: one GET through an app with 10 pure-ASGI middlewares, and through the
    same 10 middlewares around a bare ASGI callable."""
    try:
        from starlette.applications import Starlette
        from starlette.middleware import Middleware
        from starlette.responses import PlainTextResponse
        from starlette.routing import Route
    except ImportError:
        return None

    async def endpoint(request: Any) -> Any:
        return PlainTextResponse("done")

    app = Starlette(
        routes=[Route("/", endpoint)],
        middleware=[Middleware(PassThroughMiddleware) for _ in range(STAGES)],
    )
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": "/", "raw_path": b"/", "root_path": "", "query_string": b"",
        "headers": [(b"host", b"bench")], "client": ("127.0.0.1", 1), "server": ("bench", 80),
    }  # fmt: skip

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        return None

    async def bare(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})

    stack: Any = bare
    for _ in range(STAGES):
        stack = PassThroughMiddleware(stack)
    # the app scribbles on its scope (app, router, endpoint...): a fresh one per request
    return (
        lambda: _drive(app(dict(scope), receive, send)),
        lambda: _drive(stack(scope, receive, send)),
    )


class Variant:
    """One way of handling a request, with its target (x the strict baseline) if any."""

    def __init__(self, name: str, request: Request, calls: int, target: float | None = None):
        self.name = name
        self.request = request
        self.calls = calls  # per round: about the same wall time for every variant
        self.target = target
        self.seconds: list[float] = []  # per request, one entry per round


def variants(ctx: BenchContext, quick: bool) -> list[Variant]:
    """The variants, warmed up (first compile, caches, imports), strict baseline first."""
    n = 2_000 if quick else 20_000
    strict = strict_closures()
    lenient = lenient_closures()
    built = build(ctx, "bench_pass")
    found = [
        Variant("strict: 10 nested plain closures", lambda: strict(ctx), n),
        Variant("lenient: closures doing ctx.count += 1", lambda: lenient(ctx), n),
        Variant("pipeline built once, run(ctx)", lambda: built.run(ctx), n, 4.0),
        Variant("build + run per request", lambda: build(ctx, "bench_pass").run(), n // 20, 30.0),
        Variant(
            "build + run per request, shareable",
            lambda: build(ctx, "bench_shared").run(),
            n // 20,
            30.0,
        ),
    ]
    # built once per process, copied per request: instances of its own, no re-check
    template, shared_template = build(ctx, "bench_pass"), build(ctx, "bench_shared")
    found += [
        Variant("copy + run per request", lambda: template.copy().run(ctx), n // 4),
        Variant(
            "copy + run per request, shareable", lambda: shared_template.copy().run(ctx), n // 4
        ),
    ]
    hook = pluggy_request(ctx)
    if hook is not None:
        found.append(Variant("pluggy: hook through 10 wrappers", hook, n // 20))
    asgi = starlette_requests()
    if asgi is not None:
        found.append(Variant("Starlette app, 10 middlewares", asgi[0], n // 20))
        found.append(Variant("10 pure-ASGI middlewares alone", asgi[1], n // 4))
    for variant in found:
        assert variant.request() in ("done", None), variant.name
    return found


def time_round(variant: Variant) -> None:
    """One timed batch of requests (garbage collection off, as in every variant)."""
    request = variant.request
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        for _ in range(variant.calls):
            request()
        elapsed = time.perf_counter() - start
    finally:
        gc.enable()
    variant.seconds.append(elapsed / variant.calls)


def verdict(ratio: float, target: float | None) -> str:
    if target is None:
        return ""
    return f"<= {target:g}x {'PASS' if ratio <= target else 'MISS'}"


def report(found: list[Variant], rounds: int) -> None:
    base = found[0].seconds
    print(
        f"{STAGES}-stage pass-through chain, {rounds} interleaved rounds (order rotated); "
        "x strict: min to min and median to median; verdict on the medians"
    )
    print(f"{'variant':<40} {'min µs':>8} {'median µs':>10} {'x strict':>9} {'median':>7}  target")
    for v in found:
        best = min(v.seconds) / min(base)
        typical = statistics.median(v.seconds) / statistics.median(base)
        print(
            f"{v.name:<40} {min(v.seconds) * 1e6:>8.2f} "
            f"{statistics.median(v.seconds) * 1e6:>10.2f} {best:>8.1f}x "
            f"{typical:>6.1f}x  {verdict(typical, v.target)}"
        )


def timing(quick: bool, rounds: int) -> None:
    with bench_environment() as ctx:
        found = variants(ctx, quick)
        for r in range(rounds):
            for variant in found[r % len(found) :] + found[: r % len(found)]:
                time_round(variant)
    report(found, rounds)


# -- instruction counts ----------------------------------------------------------------------
# A minimal callgrind driver of this benchmark's own: a child process runs each variant
# inside sys.call_tracing (a C function nothing else calls), which callgrind collects in
# and dumps after, n and then 2n times; start-up and set-up cancel out of the difference.
_TOGGLE = "sys_call_tracing"


def _loop(request: Request, n: int) -> None:
    for _ in range(n):
        request()


def instruction_child(n: int) -> None:
    """Runs under callgrind: two dumps per variant, names on stdout."""
    with bench_environment() as ctx:
        for variant in variants(ctx, quick=True):
            gc.collect()
            gc.disable()
            for count in (n, 2 * n):
                sys.call_tracing(_loop, (variant.request, count))
            gc.enable()
            print(variant.name, flush=True)


def instructions(quick: bool) -> None:
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        sys.exit("--instructions needs valgrind (apt-get install valgrind)")
    n = 50 if quick else 200
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "callgrind.out")
        child = subprocess.run(
            [
                valgrind,
                "--tool=callgrind",
                "--collect-atstart=no",
                f"--toggle-collect={_TOGGLE}",
                f"--dump-after={_TOGGLE}",
                f"--callgrind-out-file={out}",
                sys.executable,
                __file__,
                "--instruction-child",
                str(n),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if child.returncode != 0:
            sys.exit(f"callgrind run failed:\n{child.stderr[-2000:]}")
        names = child.stdout.splitlines()
        totals = [_total(Path(f"{out}.{part}")) for part in range(1, 2 * len(names) + 1)]
    found = variants_targets()
    per_request = [(totals[2 * i + 1] - totals[2 * i]) / n for i in range(len(names))]
    print(
        f"Instructions per request (callgrind, {n} requests per variant after warm-up; "
        "machine load does not move them)"
    )
    print(f"{'variant':<40} {'instructions':>12} {'x strict':>9}  target")
    for name, count in zip(names, per_request, strict=True):
        ratio = count / per_request[0]
        print(f"{name:<40} {count:>12,.0f} {ratio:>8.1f}x  {verdict(ratio, found.get(name))}")


def _total(dump: Path) -> int:
    found = re.search(r"^totals: (\d+)", dump.read_text(), re.MULTILINE)
    if found is None:
        sys.exit(f"{dump} has no totals line")
    return int(found.group(1))


def variants_targets() -> dict[str, float | None]:
    with bench_environment() as ctx:
        return {v.name: v.target for v in variants(ctx, quick=True)}


# -- main -------------------------------------------------------------------------------------
@contextlib.contextmanager
def bench_environment() -> Iterator[BenchContext]:
    """The benchmark's registry and environment, current while the block runs."""
    registry = default_registry().copy()
    register_plugin("bench_pass", registry=registry)(PassThrough)
    register_plugin("bench_shared", registry=registry)(SharedPassThrough)
    with use_registry(registry), use_environment(Environment(DcoreSettings(), registry=registry)):
        yield BenchContext()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and requests")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (11)")
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="instructions per request, counted by callgrind, instead of time",
    )
    parser.add_argument("--instruction-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.instruction_child:
        instruction_child(args.instruction_child)
    elif args.instructions:
        instructions(args.quick)
    else:
        timing(args.quick, args.rounds or (3 if args.quick else 11))


if __name__ == "__main__":
    main()
