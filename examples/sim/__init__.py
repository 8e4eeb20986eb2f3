"""Simulator scenarios used by the README's testing guide, the tests and ``dcore explore``."""
