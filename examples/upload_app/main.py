"""The seed's ``/upload`` endpoint, verbatim but for the import roots and ``await
pipeline.arun()`` (the hand-off off the event loop), plus two helpers.

``schedule_job`` is dcore's configurable Dispatch: with the default
``DCORE_DISPATCHER=auto`` it hands the rest of the pipeline to the request's
``BackgroundTasks``, so ``storage_write`` and ``logging`` run after the response is
sent. ``/v2/upload`` is the same pipeline with a module-level core function, which is
what a remote engine needs (``DCORE_DISPATCHER=celery``): a worker must be able to
import it. ``GET /jobs/{job_id}`` reads the job store.
"""

# main.py
from typing import Any

from fastapi import BackgroundTasks, FastAPI, HTTPException, UploadFile

from dcore import Dispatch, Execute, core_function

from .app.contexts import FileJobContext

app = FastAPI()


@app.post("/upload")
async def upload_endpoint(background_tasks: BackgroundTasks, file: UploadFile) -> Any:
    # 1. Build the request-scoped context
    ctx = FileJobContext(
        file_path=f"uploads/{file.filename}",
        file_content=await file.read(),
        job_type="fastapi",
        background_tasks=background_tasks,
    )

    # 2. Define the core business logic that runs last (in the background)
    def core_finalize(context: FileJobContext) -> Any:
        print(f"SUCCESS: Background processing for '{context.file_path}' is complete.")
        return {"stored_path": context.file_path, "ok": True}

    # 3. Create a pipeline and chain the stages
    #    Execution order is top-to-bottom.
    pipeline = ctx.create_pipeline(core_fn=core_finalize)
    pipeline.chain(Dispatch, plugin="schedule_job").chain(Execute, plugin="storage_write").chain(
        Execute,
        plugin="logging",  # Example of another filter
    )

    # 4. Run the pipeline
    # The 'schedule_job' dispatcher will intercept the call, schedule the rest
    # of the chain to run in the background, and return immediately. arun() does
    # the hand-off (job record, send) in a worker thread: the loop keeps serving.
    result = await pipeline.arun()
    return result


@core_function
def finalize_upload(context: FileJobContext) -> Any:
    """The core function at module level, so any dispatcher (Celery too) can ship it."""
    print(f"SUCCESS: Background processing for '{context.file_path}' is complete.")
    return {"stored_path": context.file_path, "ok": True}


def build_upload_pipeline(ctx: FileJobContext) -> Any:
    """The upload pipeline; ``dcore graph examples.upload_app.main:example_pipeline``."""
    pipeline = ctx.create_pipeline(core_fn=finalize_upload)
    pipeline.chain(Dispatch, plugin="schedule_job")
    pipeline.chain(Execute, plugin="storage_write")
    pipeline.chain(Execute, plugin="logging")
    return pipeline


def example_pipeline() -> Any:
    """A pipeline over a sample context, for ``dcore graph``."""
    return build_upload_pipeline(
        FileJobContext(
            file_path="uploads/a.txt",
            file_content=b"",
            job_type="demo",
            background_tasks=BackgroundTasks(),
        )
    )


@app.post("/v2/upload")
async def upload_v2(background_tasks: BackgroundTasks, file: UploadFile) -> Any:
    ctx = FileJobContext(
        file_path=f"uploads/{file.filename}",
        file_content=await file.read(),
        job_type="v2",
        background_tasks=background_tasks,
    )
    return await build_upload_pipeline(ctx).arun()


@app.get("/jobs/{job_id}")
def job_status(job_id: str) -> Any:
    from dcore import current_environment
    from dcore.errors import JobNotFoundError

    try:
        record = current_environment().jobs.get(job_id)
    except JobNotFoundError:
        raise HTTPException(status_code=404, detail=f"no job {job_id}") from None
    return {
        "job_id": record.job_id,
        "state": record.state,
        "attempts": record.attempts,
        "result": record.result,
        "error": record.error,
        "history": [t.model_dump() for t in record.history],
    }
