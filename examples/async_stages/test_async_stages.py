"""The async report app: the endpoint keeps serving while a request awaits its lookup,
reports render in the background on the thread and FastAPI engines, and in the
simulator a minute of awaiting takes no wall time and runs the same every time."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from dcore import AsyncStageError, Environment, JobState
from dcore.dispatchers.thread import ThreadDispatcher
from dcore_testing import invariants
from dcore_testing.sim import SimEnvironment
from examples.async_stages import app as report_app
from examples.async_stages.app import (
    ProfileService,
    ReportContext,
    app,
    report_key,
    report_pipeline,
)


class GatedProfiles(ProfileService):
    """Looking up "slow" waits until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__(latency=0.0)
        self.reached = asyncio.Event()
        self.gate = asyncio.Event()

    async def lookup(self, user: str) -> dict[str, str]:
        if user == "slow":
            self.reached.set()
            await self.gate.wait()
        return await super().lookup(user)


# --8<-- [start:concurrent]
def test_the_endpoint_serves_other_requests_while_one_awaits_its_lookup(
    dcore_env: Environment, monkeypatch: pytest.MonkeyPatch
) -> None:
    answered: list[str] = []

    async def scenario() -> None:
        profiles = GatedProfiles()
        monkeypatch.setattr(report_app, "PROFILES", profiles)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:

            async def post(user: str) -> httpx.Response:
                response = await client.post(f"/reports/{user}")
                answered.append(user)
                return response

            slow = asyncio.create_task(post("slow"))
            await asyncio.wait_for(profiles.reached.wait(), 10)  # it awaits its lookup
            others = await asyncio.wait_for(
                asyncio.gather(*(post(f"user{i}") for i in range(3))), 10
            )
            assert not slow.done()  # still awaiting while the others were answered
            profiles.gate.set()
            responses = [await asyncio.wait_for(slow, 10), *others]

        assert [r.status_code for r in responses] == [200] * 4
        for response in responses:
            job = dcore_env.jobs.get(response.json()["job_id"])
            assert job.state is JobState.SUCCEEDED  # rendered in BackgroundTasks

    asyncio.run(scenario())
    assert answered[-1] == "slow"
    assert sorted(answered[:3]) == ["user0", "user1", "user2"]
    assert dcore_env.storage.get("reports/slow.txt") == b"Report for Slow"


# --8<-- [end:concurrent]


def test_reports_render_in_the_background_on_the_thread_engine(dcore_env: Environment) -> None:
    context = ReportContext(user="ada")
    handle = asyncio.run(report_pipeline(context, "thread").arun())
    ThreadDispatcher.drain(10)
    assert dcore_env.jobs.get(handle.job_id).result == {"report": "reports/ada.txt"}
    assert dcore_env.storage.get(report_key(context)) == b"Report for Ada"


def test_run_refuses_the_pipeline_and_names_arun(dcore_env: Environment) -> None:
    with pytest.raises(AsyncStageError, match=r"'lookup_profile'.*await pipeline\.arun\(\)"):
        report_pipeline(ReportContext(user="ada"), "thread").run()


def three_reports(sim: SimEnvironment) -> None:
    """Three reports through Celery (simulated): a 20 s lookup in the request, a 40 s
    render in the background, two workers."""

    async def requests() -> None:
        for user in ("ada", "bob", "cy"):
            await report_pipeline(ReportContext(user=user), "celery", render_seconds=40).arun()

    report_app.PROFILES = ProfileService(latency=20)
    try:
        sim.run_async(requests())
        sim.run_until_idle()
    finally:
        report_app.PROFILES = ProfileService()


def test_in_the_simulator_awaiting_takes_virtual_time_only_and_runs_repeat() -> None:
    started = time.perf_counter()
    with SimEnvironment(seed=11, workers=2) as sim:
        three_reports(sim)
        invariants.no_job_lost(sim)
        assert sim.storage.get("reports/cy.txt") == b"Report for Cy"
        # the lookups ran one after the other in the request (60 s); the last render
        # started then and took 40 s
        assert sim.clock.monotonic() == 100.0
    assert time.perf_counter() - started < 5  # a minute and a half of waits, no sleep
    SimEnvironment(seed=11, workers=2).check_determinism(three_reports)
