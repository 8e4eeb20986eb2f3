"""Built-in Dispatch plugins: inline, thread, fastapi, schedule_job (and celery)."""
