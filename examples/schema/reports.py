"""A context that changed shape after messages of its first version were queued.

Version 1.0 sent ``{"title": "q3"}``. Version 2.0 calls the field ``name`` and adds
``pages``: a rename, so ``__version__`` went up and a ``@migration("1.0")`` maps the old
key. Without the migration a 1.0 message would be dead-lettered ("ReportContext data has
keys it does not know: 'title'"), never run under an empty name.

``golden/`` beside this module keeps the message each version sent (recorded from
``report_pipeline`` with ``pytest --dcore-update-golden``); ``test_schema_guide.py``
checks that this code still runs all of them.
"""

from __future__ import annotations

from typing import Any

from dcore import Dispatch, Execute, Pipeline, PipelineContext, core_function, migration


class ReportContext(PipelineContext):
    __version__ = "2.0"
    name: str
    pages: int = 1

    @migration("1.0")
    @classmethod
    def title_became_name(cls, data: dict[str, Any]) -> dict[str, Any]:
        data["name"] = data.pop("title")
        return data


@core_function
def render(ctx: ReportContext) -> str:
    return f"reports/{ctx.name}.pdf"


def report_pipeline(ctx: ReportContext) -> Pipeline[ReportContext]:
    """Renders in the background: everything after ``schedule_job`` is a message."""
    pipeline = ctx.create_pipeline(core_fn=render)
    pipeline.chain(Dispatch, plugin="schedule_job")
    pipeline.chain(Execute, plugin="logging")
    return pipeline
