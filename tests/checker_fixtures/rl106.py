"""RL106: a blocking call in async code, off the thread bridge."""

import os
import sqlite3

from ragline import Lifetime, ThreadBridge


async def blocks(path: str) -> None:
    sqlite3.connect(path)  # expect: RL106
    for _ in os.walk(path):  # expect: RL106
        pass


async def bridged(bridge: ThreadBridge, lifetime: Lifetime, path: str) -> None:
    await bridge.call(lifetime, sqlite3.connect, path)


def in_a_thread(path: str) -> None:
    sqlite3.connect(path)  # not async: this is where blocking calls belong
