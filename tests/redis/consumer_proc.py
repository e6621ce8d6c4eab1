"""A consumer process for the fault tests, using catga's public API only.

``python -m tests.redis.consumer_proc URL PREFIX [--hang]``: runs a Worker on Redis
until killed. It sets ``{prefix}:ready:{pid}`` once subscribed.
"""

from __future__ import annotations

import argparse
import asyncio
import os

from redis.asyncio import Redis

from catga import CatgaOptions, IdempotencyOptions, Mediator, Worker
from catga_redis import RedisConfig, RedisIdempotencyStore, RedisTransport

from .fault_app import ROUTES, registry

CLAIM_IDLE = 0.5
LEASE = 1.0


def config(url: str, prefix: str) -> RedisConfig:
    """The timings both the test and this process use."""
    return RedisConfig(
        url=url,
        prefix=prefix,
        block=0.05,
        claim_idle=CLAIM_IDLE,
        claim_interval=0.05,
        max_deliveries=100,
    )


async def main(url: str, prefix: str, hang: bool) -> None:
    effects = Redis.from_url(url)
    store = RedisIdempotencyStore(config(url, prefix))
    options = CatgaOptions(routes=ROUTES, idempotency=IdempotencyOptions(lease=LEASE))
    async with RedisTransport(config(url, prefix)) as transport:
        mediator = Mediator(
            registry(effects, prefix, hang=hang), options=options, transport=transport, store=store
        )
        async with Worker(mediator, keepalive=0.1, busy_delay=0.1):
            await effects.set(f"{prefix}:ready:{os.getpid()}", 1)
            await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("prefix")
    parser.add_argument("--hang", action="store_true")
    args = parser.parse_args()
    asyncio.run(main(args.url, args.prefix, args.hang))
