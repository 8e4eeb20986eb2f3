"""Hiding secrets in URLs before they reach an error message or a log line."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

__all__ = ["redact_url"]


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, safe for messages and logs: in the
    user info, and in a ``password=`` query argument (redis-py reads that one too)."""
    parts = original = urlsplit(url)
    if parts.query:
        query = "&".join(
            "password=***" if item.partition("=")[0] == "password" else item
            for item in parts.query.split("&")
        )
        parts = parts._replace(query=query)
    if parts.password is not None:
        host = parts.hostname or ""
        if parts.port is not None:
            host = f"{host}:{parts.port}"
        user = parts.username or ""
        parts = parts._replace(netloc=f"{user}:***@{host}")
    return url if parts == original else urlunsplit(parts)
