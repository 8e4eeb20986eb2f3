"""Service backends: in-memory ones that need no server, and Redis/S3 for production."""
