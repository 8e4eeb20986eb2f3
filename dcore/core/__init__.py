"""Documented aliases for the first release's import paths: ``dcore.core.context``,
``dcore.core.interfaces`` and ``dcore.core.plugins``. The engine itself is private.
"""
