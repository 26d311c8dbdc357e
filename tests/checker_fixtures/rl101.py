"""RL101: a lifetime the caller has, not passed to a callee that takes an optional one."""

from ragline import Lifetime


async def fetch(url: str, lifetime: Lifetime | None = None) -> str:
    return url


async def handler(url: str, lifetime: Lifetime) -> str:
    return await fetch(url)  # expect: RL101


async def passes_it(url: str, lifetime: Lifetime) -> str:
    return await fetch(url, lifetime)


async def passes_a_stage(url: str, lifetime: Lifetime) -> str:
    with lifetime.child("fetch", timeout=5) as stage:
        return await fetch(url, lifetime=stage)


async def has_none_to_pass(url: str) -> str:
    return await fetch(url)  # no lifetime here: nothing dropped


async def forwards_everything(url: str, lifetime: Lifetime, **options: object) -> str:
    return await fetch(url, **options)  # cannot tell what **options holds
