"""A delivery that goes back to the broker without having failed is not an attempt.

A pool gives deliveries back when it stops (the ones it fetched and had not
started, and the ones it was running when the grace ran out) and when a
message's key is running elsewhere (looked at again every 5 s). None of them
failed, so none may use up the item's retries: on main each came back one
attempt later, so an item given back twice reached its first run as attempt
3 and was dead-lettered after a single failure.
"""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import pytest
from chute import Runtime, load_config
from chute import pool as pool_module
from chute.message import Message

from tests.helpers.configs import python_pool
from tests.nats_server import shared_nats_url
from tests.nats_server import unique_prefix as nats_prefix

RECORDER = """\
import anyio
ran = []
async def work(item):
    ran.append(item["seq"])
    await anyio.sleep(item["sleep"])
"""


def _config(tmp_path: Path, module: str, *, track: bool, concurrency: int = 1,
            broker: str = "local") -> Path:  # fmt: skip
    settings = (
        f'broker = "{broker}"\nworkdir = "work"\nlog_level = "error"\nshutdown_grace = "200ms"'
    )
    pool = f'track = {str(track).lower()}\nretry = {{ attempts = 2, backoff = "10ms" }}'
    return python_pool(tmp_path, module, concurrency=concurrency, settings=settings, pool=pool)


@pytest.mark.parametrize("broker", ["local", "redis", "nats"])
@pytest.mark.parametrize("track", [True, False], ids=["tracked", "untracked"])
async def test_a_stop_is_not_an_attempt(
    tmp_path: Path,
    track: bool,
    broker: str,
    request: pytest.FixtureRequest,
    caplog: pytest.LogCaptureFixture,
) -> None:
    module = f"stop_recorder_{track}_{broker}"
    (tmp_path / f"{module}.py").write_text(RECORDER)
    url = {
        "redis": lambda: request.getfixturevalue("redis_url"),
        "nats": lambda: f"{shared_nats_url()}?prefix={nats_prefix()}",
    }.get(broker, lambda: broker)()
    config = _config(tmp_path, module, track=track, concurrency=2, broker=url)
    # Without a state store the second message has the first one's key, and
    # waits in the pool behind it; with one, both run.
    second_key = "b" if track else "a"
    started = [0, 1] if track else [0]
    # Stopped twice while item 0 (and 1, where it runs) runs past the grace.
    for round_ in range(2):
        async with Runtime(load_config(config)) as rt:
            if round_ == 0:
                jobs = [Message(key=key, data={"seq": n, "sleep": 60})
                        for n, key in enumerate(["a", second_key])]  # fmt: skip
                await rt.publish_many("jobs", jobs)
            with anyio.fail_after(10):
                while sorted(sys.modules[module].ran) != started:  # noqa: ASYNC110 - no event
                    await anyio.sleep(0.01)
            rt.stop()
        sys.modules[module].ran.clear()
    # Then each item fails once: it has a retry left, and succeeds on it.
    (tmp_path / f"{module}_2.py").write_text(FAIL_ONCE)
    config.write_text(config.read_text().replace(f"{module}:work", f"{module}_2:work"))
    async with Runtime(load_config(config)) as rt:
        with anyio.fail_after(30):
            await rt.wait_idle()
        counters = rt.pools["work"].counters
        rt.stop()
    assert sys.modules[f"{module}_2"].runs == {0: 2, 1: 2}
    assert (counters.succeeded, counters.dead) == (2, 0)
    # The cancelled items' claims went back too: a restart finds no crash's leftovers.
    assert "left running by an earlier crash" not in caplog.text


async def test_a_key_running_elsewhere_is_not_an_attempt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another node holds the item's lease for a second: the message is looked
    # at again (every 5 s; here 50 ms) until the lease runs out, and then runs
    # as its first attempt, with its one retry left.
    monkeypatch.setattr(pool_module, "_BUSY_KEY_DELAY", 0.05)
    (tmp_path / "busy_key.py").write_text(FAIL_ONCE)
    config = _config(tmp_path, "busy_key", track=True)
    async with Runtime(load_config(config)) as rt:
        pool = rt.pools["work"]
        assert pool.store is not None
        [claim] = await pool.store.claim_many("work", ["same"], owner="another-node", lease=1.0)
        assert claim.granted
        await rt.publish_many("jobs", [Message(key="same", data={"seq": 0})])
        with anyio.fail_after(30):
            await rt.wait_idle()
        counters = pool.counters
        rt.stop()
    assert sys.modules["busy_key"].runs == {0: 2}
    assert (counters.succeeded, counters.dead) == (1, 0)


FAIL_ONCE = """\
runs = {}
def work(item):
    runs[item["seq"]] = runs.get(item["seq"], 0) + 1
    if runs[item["seq"]] == 1:
        raise RuntimeError("the first try fails")
"""
