"""The web process dies: after answering a request, or between recording a job and
sending it.

A signup endpoint hands the welcome mail to the background. With FastAPI's
BackgroundTasks the job lives in the web process's memory: if that process dies right
after answering, the job is gone (PENDING for ever). Shipped through Celery the message
is on the broker before the answer, and a job recorded but never sent (the process died
in between) is re-sent by the workers' recovery sweep.

    FaultPlan(WebCrash(when="after_response"))
    FaultPlan(WebCrash(when="after_record"))
"""

from __future__ import annotations

from typing import Any

from dcore import (
    Dispatch,
    Execute,
    NextFn,
    PipelineContext,
    core_function,
    default_registry,
    register_plugin,
)
from dcore_testing import invariants
from dcore_testing.sim import SimEnvironment, effect


class Signup(PipelineContext):
    email: str


@register_plugin("welcome_mail", registry=default_registry(), replace=True)
class WelcomeMail(Execute[Signup]):
    def execute(self, next_fn: NextFn[Signup], context: Signup) -> Any:
        effect("mail", to=context.email)
        return next_fn(context)


@core_function
def signed_up(context: Signup) -> str:
    return context.email


def endpoint(dispatcher: str) -> Any:
    """The request handler: record the signup, hand the mail to the background."""
    ctx = Signup(email="ada@example.com")
    pipeline = ctx.create_pipeline(core_fn=signed_up)
    pipeline.chain(Dispatch, plugin=dispatcher).chain(Execute, plugin="welcome_mail")
    return pipeline.run()


def sign_up(sim: SimEnvironment, dispatcher: str) -> None:
    sim.request(endpoint, dispatcher)
    sim.run_until_idle()
    invariants.no_job_lost(sim)
    invariants.at_least_once(sim, "mail")


def buggy(sim: SimEnvironment) -> None:
    sign_up(sim, "fastapi")


def fixed(sim: SimEnvironment) -> None:
    sign_up(sim, "celery")
