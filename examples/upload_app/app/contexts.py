# app/contexts.py
from fastapi import BackgroundTasks

from dcore import PipelineContext


class FileJobContext(PipelineContext):
    file_path: str
    file_content: bytes
    job_type: str
    background_tasks: BackgroundTasks
