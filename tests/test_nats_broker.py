"""The JetStream broker outside the conformance suite: what a user sees when NATS is away."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats.errors
import nats.js.errors
import pytest
from chute.message import Message
from chute_plugins.brokers import nats_given_back as given_back
from chute_plugins.brokers.nats_jetstream import JetStreamBroker

from tests.nats_server import shared_nats_url, unique_prefix
from tests.servers import free_port


def test_an_unreachable_nats_server_is_one_line_and_exit_3(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    port = free_port()  # nothing listens there
    url = f"nats://127.0.0.1:{port}?connect_timeout=1"
    config.write_text(
        f'broker = "{url}"\n[topics.jobs]\n'
        '[sinks.out]\ntype = "file"\ntopic = "jobs"\npath = "out.ndjson"\n'
    )
    done = subprocess.run([sys.executable, "-m", "chute", "run", str(config)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 3, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("chute:")]
    assert lines == [f"chute: cannot reach nats at nats://127.0.0.1:{port}"]
    assert "Traceback" not in done.stderr


async def test_a_topic_made_anew_does_not_inherit_an_old_give_back() -> None:
    # A give-back's record is keyed by the entry's stream sequence, which a
    # topic deleted and made again starts over: the acked entry's record is
    # deleted, and the new entry with that sequence counts as usual.
    url = f"{shared_nats_url()}?prefix={unique_prefix()}"
    for round_ in range(2):
        broker = JetStreamBroker(url)
        await broker.start()
        try:
            await broker.declare_topic("t", capacity=100)
            await broker.ensure_group("t", "g", visibility_timeout=30.0)
            await broker.publish("t", [Message(data={"round": round_})])
            [m] = await broker.read("t", "g", "c", count=1, block=2.0)
            await broker.nack("t", "g", [m.id], counted=round_ == 1)
            [again] = await broker.read("t", "g", "c", count=1, block=2.0)
            assert again.id == m.id  # the same stream sequence both rounds
            assert (again.data, again.attempt) == ({"round": round_}, 1 if round_ == 0 else 2)
            await broker.ack("t", "g", [again.id])
            if round_ == 0:  # the topic goes; the bucket of give-backs stays
                await broker.js.delete_stream(broker._topic("t").stream)
            else:
                await broker.delete_all()
        finally:
            await broker.aclose()


@contextlib.asynccontextmanager
async def _one_message(prefix: str = "") -> AsyncIterator[JetStreamBroker]:
    """A broker whose topic "t" holds one message for group "g"; all deleted after."""
    broker = JetStreamBroker(f"{shared_nats_url()}?prefix={prefix or unique_prefix()}")
    await broker.start()
    try:
        await broker.declare_topic("t", capacity=100)
        await broker.ensure_group("t", "g", visibility_timeout=30.0)
        await broker.publish("t", [Message(data={})])
        yield broker
    finally:
        await broker.delete_all()
        await broker.aclose()


async def test_a_give_back_bucket_made_with_other_settings_is_used_as_it_is() -> None:
    # Another node (another version, other replicas) made the bucket first.
    prefix = unique_prefix()
    async with _one_message(prefix) as broker:
        await broker.js.create_key_value(bucket=f"{prefix}_given_back", history=5)
        [m] = await broker.read("t", "g", "c", count=1, block=2.0)
        await broker.nack("t", "g", [m.id], counted=False)
        [again] = await broker.read("t", "g", "c", count=1, block=2.0)
        assert (again.id, again.attempt) == (m.id, 1)
        await broker.ack("t", "g", [again.id])


async def test_a_give_back_record_read_during_an_outage_is_read_again() -> None:
    # The records are read concurrently; a timeout in one of them is an outage
    # like any other (retried), not an error that stops the read.
    async with _one_message() as broker:
        [m] = await broker.read("t", "g", "c", count=1, block=2.0)
        await broker.nack("t", "g", [m.id], counted=False)
        given = broker._given_back  # opened by the give-back
        assert given is not None
        real_get, failures = given.get, [nats.errors.TimeoutError()]

        async def flaky_get(key: str) -> Any:
            if failures:
                raise failures.pop()
            return await real_get(key)

        given.get = flaky_get  # type: ignore[method-assign]
        [again] = await broker.read("t", "g", "c", count=1, block=2.0)
        assert (again.id, again.attempt, failures) == (m.id, 1, [])
        await broker.ack("t", "g", [again.id])


async def test_a_server_that_refuses_the_give_back_bucket_still_runs(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A locked-down account (no right to make streams, or at its limit):
    # give-backs then count, as before, and reads and nacks go on.
    async def refused(*args: Any) -> Any:
        raise nats.js.errors.BadRequestError(code=400, err_code=10027, description="no room")

    monkeypatch.setattr(given_back, "open_bucket", refused)
    async with _one_message() as broker:
        for attempt in (1, 2, 3):
            [m] = await broker.read("t", "g", "c", count=1, block=2.0)
            assert m.attempt == attempt
            await broker.nack("t", "g", [m.id], counted=False)
        assert caplog.text.count("cannot keep give-back records") == 1
