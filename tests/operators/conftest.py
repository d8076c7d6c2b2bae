from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from chute_plugins.brokers.memory import MemoryBroker


@pytest.fixture
async def broker() -> AsyncIterator[MemoryBroker]:
    b = MemoryBroker()
    await b.start()
    try:
        yield b
    finally:
        await b.aclose()
