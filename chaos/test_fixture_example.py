"""The chaos fixtures as the docs show them: a partition makes a call fail, the heal
makes it work again (docs/how-to/chaos.md shows this test)."""

from __future__ import annotations

from typing import Any

import pytest
import redis


# --8<-- [start:partition]
@pytest.mark.chaos
def test_cache_survives_a_partition(dcore_chaos_redis: Any) -> None:
    dcore_chaos_redis.client.set("k", "v")
    with dcore_chaos_redis.proxy.partition(), pytest.raises(redis.ConnectionError):
        dcore_chaos_redis.client.get("k")
    assert dcore_chaos_redis.client.get("k") == b"v"  # healed


# --8<-- [end:partition]
