"""Simulator scenarios used by docs/testing.md, the tests and ``dcore explore``."""
