"""The plugin machinery: registries, interfaces and the core-function registry.

It sits below the service interfaces (which are plugin interfaces) and below the pipeline
engine in ``dcore._core``, and imports neither.
"""
