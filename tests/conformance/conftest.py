from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from chute.broker import Broker

from .backends import BACKENDS


@pytest.fixture(params=sorted(BACKENDS))
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[Broker]:
    async with BACKENDS[request.param]() as b:
        yield b
