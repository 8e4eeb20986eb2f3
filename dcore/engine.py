"""Building blocks for engines: what a dispatcher that runs jobs elsewhere, or a simulator,
needs beyond the names in :mod:`dcore`.

An engine takes a message off its transport, hands it to :func:`deliver_message`, and
carries out the :class:`Outcome` it returns (ack, retry after a delay, requeue, ...); it
never decides on its own. :mod:`dcore.celery` and ``dcore_testing.sim`` are built on
exactly these names.
"""

from dcore._core.context import context_type, context_type_name, registered_context_types
from dcore._core.delivery import Action, Outcome
from dcore._core.environment import scoped_environment
from dcore._core.ids import use_id_source
from dcore._core.leases import Heartbeat
from dcore._core.lifecycle import Delivered, describe_error
from dcore._core.loops import run_coroutine
from dcore._core.recovery import Lost, lost_jobs
from dcore._core.redact import redact_url
from dcore._core.retry import job_policy
from dcore._core.runner import Stage
from dcore._worker import deliver_message, load_message

__all__ = [
    "Action",
    "Delivered",
    "Heartbeat",
    "Lost",
    "Outcome",
    "Stage",
    "context_type",
    "context_type_name",
    "deliver_message",
    "describe_error",
    "job_policy",
    "load_message",
    "lost_jobs",
    "redact_url",
    "registered_context_types",
    "run_coroutine",
    "scoped_environment",
    "use_id_source",
]
