"""Redis URLs in messages never carry a password, wherever the URL puts it: redis-py
also reads ``?password=`` from the query string."""

from __future__ import annotations

import pytest

from dcore.backends._redis import redact_url
from dcore.backends.redis_jobs import RedisJobStore
from dcore.errors import ServiceUnavailableError


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://user:s3cret@127.0.0.1:6379/0", "redis://user:***@127.0.0.1:6379/0"),
        ("redis://127.0.0.1:6379/0?password=s3cret", "redis://127.0.0.1:6379/0?password=***"),
        (
            "rediss://127.0.0.1:6380/1?ssl_cert_reqs=none&password=s3cret&username=me",
            "rediss://127.0.0.1:6380/1?ssl_cert_reqs=none&password=***&username=me",
        ),
        ("redis://127.0.0.1:6379/0?db=2", "redis://127.0.0.1:6379/0?db=2"),
    ],
)
def test_redact_url_hides_the_password_in_userinfo_and_query(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_unreachable_redis_error_hides_a_query_string_password() -> None:
    store = RedisJobStore(url="redis://127.0.0.1:1/0?password=s3cret")
    with pytest.raises(ServiceUnavailableError) as caught:
        store.get("j")
    assert "s3cret" not in str(caught.value)
    assert "redis://127.0.0.1:1/0?password=***" in str(caught.value)
    store.close()
