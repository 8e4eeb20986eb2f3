# The image for the example app and the Celery worker (docker-compose.yml builds it once).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONPATH=/app

WORKDIR /app

# dependencies first, so editing the examples does not reinstall them
COPY pyproject.toml README.md LICENSE constraints.txt ./
COPY dcore ./dcore
COPY dcore_testing ./dcore_testing
# the versions the test suite was verified with (constraints.txt), as `make` installs them
RUN pip install -c constraints.txt ".[all]" uvicorn

COPY examples ./examples

# Celery refuses to be comfortable as root; so do we
RUN useradd --create-home --uid 1000 dcore
USER dcore

EXPOSE 8000
CMD ["uvicorn", "examples.upload_app.main:app", "--host", "0.0.0.0", "--port", "8000"]
