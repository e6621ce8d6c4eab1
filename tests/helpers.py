"""Helpers shared by the test suites."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable

import pytest

__all__ = ["eventually"]


async def eventually(predicate: Callable[[], object], timeout: float = 5.0, what: str = "") -> None:
    """Poll ``predicate`` (sync or async) every 10 ms until it is truthy; fail after ``timeout``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"condition not met within {timeout}s: {what or predicate!r}")
        await asyncio.sleep(0.01)
