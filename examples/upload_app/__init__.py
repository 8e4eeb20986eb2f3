"""The seed's asynchronous file upload: FastAPI + storage_write + a background dispatch."""
