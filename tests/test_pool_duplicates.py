"""Two messages for one item in one pool: it runs once, the second is skipped.

A durable topic makes this common: after a restart a watched folder offers
every unfinished file again while its first message is still queued, and a
stage that ran an item twice (in flight at a crash) publishes two results.
(On the code this branch started from the item ran three times: the store
granted the same owner a second claim of a running item.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
from chute.config import config_from_dict
from chute.engine import Runtime
from chute.message import new_message

from .helpers import tasks


async def test_a_second_message_for_a_running_item_does_not_run_it_again(
    tmp_path: Path,
) -> None:
    log = tmp_path / "ran.log"
    doc: dict[str, Any] = {
        "workdir": str(tmp_path / "work"),
        "topics": {"jobs": {}},
        "pools": {
            "work": {
                "topic": "jobs",
                "concurrency": 4,
                "executor": {
                    "type": "python",
                    "function": "tests.helpers.tasks:record",
                    "thread": True,
                },
            }
        },
    }
    config = config_from_dict(doc, path="t.toml", base_dir=str(tmp_path))
    tasks.calls.clear()
    async with Runtime(config, until_idle=True) as rt:
        item = {"n": 1, "log": str(log), "sleep": 0.3}
        # One batch holding the item twice, then a third copy while it runs.
        await rt.publish_many("jobs", [new_message(item, key="x"), new_message(item, key="x")])
        await anyio.sleep(0.1)
        await rt.publish("jobs", item, key="x")
        with anyio.fail_after(30):  # the second copies are looked at again after 5 s
            await rt.wait_for("work", "x")
            await rt.wait_idle()
    assert log.read_text().split() == ["1"]
    assert rt.pools["work"].counters.skipped == 2
