"""Simulator scenarios used by the simulator guide (docs/how-to/simulator.md), the tests
and ``dcore explore``."""
