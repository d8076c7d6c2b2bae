"""copy, filter, split: what reaches each output, what is counted, what is dead-lettered."""

from __future__ import annotations

import pytest
from chute.errors import ConfigError
from chute_plugins.brokers.memory import MemoryBroker

from .helpers import drain, keys, make, publish, take, watch

SIGNUPS = [
    ("ann", {"user": "ann", "channel": "email"}),
    ("bob", {"user": "bob", "channel": "sms"}),
    ("cy", {"user": "cy", "channel": "email"}),
    ("dee", {"user": "dee", "channel": "pigeon"}),
]


async def test_copy_sends_every_message_to_every_output_in_order(broker: MemoryBroker) -> None:
    op = await make(broker, "fanout", {"type": "copy", "input": "in", "outputs": ["a", "b"]})
    await watch(broker, "a", "b")
    await publish(broker, "in", SIGNUPS)
    assert await drain(op) == 4
    for topic in ("a", "b"):
        got = await take(broker, topic)
        assert keys(got) == ["ann", "bob", "cy", "dee"]
        assert [m.data for m in got] == [d for _, d in SIGNUPS]
    stats = op.stats()
    assert (stats.received, stats.published, stats.outputs) == (4, 8, {"a": 4, "b": 4})
    assert (await broker.stats("in")).backlog("fanout") == 0


async def test_filter_keeps_matches_and_drops_or_rejects_the_rest(broker: MemoryBroker) -> None:
    where = "data.channel == 'email'"
    keep = await make(
        broker, "emails", {"type": "filter", "input": "in", "output": "e", "where": where}
    )
    both = await make(
        broker,
        "sorted",
        {"type": "filter", "input": "in", "output": "e2", "where": where, "rejected": "other"},
    )
    await watch(broker, "e", "e2", "other")
    await publish(broker, "in", SIGNUPS)
    await drain(keep)
    await drain(both)
    assert keys(await take(broker, "e")) == ["ann", "cy"]
    assert keep.stats().dropped == 2
    assert keys(await take(broker, "e2")) == ["ann", "cy"]
    assert keys(await take(broker, "other")) == ["bob", "dee"]
    assert both.stats().dropped == 0


async def test_split_first_match_default_route(broker: MemoryBroker) -> None:
    op = await make(
        broker,
        "channels",
        {
            "type": "split",
            "input": "in",
            "routes": [
                {"when": "data.channel == 'email'", "output": "email"},
                {"when": "data.channel == 'sms'", "output": "sms"},
                {"when": "key == 'ann'", "output": "vip"},
            ],
            "default": "manual",
        },
    )
    await watch(broker, "email", "sms", "vip", "manual")
    await publish(broker, "in", SIGNUPS)
    await drain(op)
    assert keys(await take(broker, "email")) == ["ann", "cy"]
    assert keys(await take(broker, "sms")) == ["bob"]
    assert keys(await take(broker, "vip")) == []  # ann matched email first
    assert keys(await take(broker, "manual")) == ["dee"]
    assert (op.stats().unmatched, op.stats().dropped) == (1, 0)


async def test_split_all_matches_each_output_once(broker: MemoryBroker) -> None:
    op = await make(
        broker,
        "tags",
        {
            "type": "split",
            "mode": "all",
            "input": "in",
            "routes": [
                {"when": "data.channel == 'email'", "output": "email"},
                {"when": "key == 'ann'", "output": "vip"},
                {"when": "key == 'ann' || key == 'cy'", "output": "vip"},
            ],
        },
    )
    await watch(broker, "email", "vip")
    await publish(broker, "in", SIGNUPS)
    await drain(op)
    assert keys(await take(broker, "email")) == ["ann", "cy"]
    assert keys(await take(broker, "vip")) == ["ann", "cy"]
    stats = op.stats()
    assert (stats.unmatched, stats.dropped) == (2, 2)  # bob and dee: counted, dropped


async def test_split_dead_letters_unmatched_when_asked(broker: MemoryBroker) -> None:
    op = await make(
        broker,
        "channels",
        {
            "type": "split",
            "input": "in",
            "routes": [{"when": "data.channel == 'sms'", "output": "sms"}],
            "dead_letter_unmatched": True,
        },
    )
    await watch(broker, "sms", "channels.dead")
    await publish(broker, "in", SIGNUPS)
    await drain(op)
    dead = await take(broker, "channels.dead")
    assert keys(dead) == ["ann", "cy", "dee"]
    assert {m.headers["error"] for m in dead} == {"matched no route"}
    assert op.stats().dead_lettered == 3
    assert (await broker.stats("in")).backlog("channels") == 0


@pytest.mark.parametrize("kind", ["filter", "split"])
async def test_a_message_the_expression_fails_on_is_dead_lettered_others_flow(
    broker: MemoryBroker, kind: str
) -> None:
    # Ordering a string against a number raises in JMESPath.
    where = "data.size > `100`"
    table = (
        {"type": "filter", "input": "in", "output": "big", "where": where}
        if kind == "filter"
        else {"type": "split", "input": "in", "routes": [{"when": where, "output": "big"}]}
    )
    op = await make(broker, "sizes", table)
    await watch(broker, "big", "sizes.dead")
    await publish(
        broker, "in", [("a", {"size": 500}), ("bad", {"size": "huge"}), ("c", {"size": 900})]
    )
    await drain(op)
    assert keys(await take(broker, "big")) == ["a", "c"]
    dead = await take(broker, "sizes.dead")
    assert keys(dead) == ["bad"]
    assert dead[0].headers["operator"] == "sizes"
    assert "TypeError" in dead[0].headers["error"]
    assert dead[0].data == {"size": "huge"}
    assert (op.stats().errors, op.stats().dead_lettered) == (1, 1)


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        (
            {"type": "filter", "input": "in", "output": "o", "where": "data.x =="},
            "[operators.op] where: not a valid JMESPath expression: incomplete expression",
        ),
        (
            {
                "type": "split",
                "input": "in",
                "routes": [{"when": "key", "output": "a"}, {"when": "nope(key)", "output": "b"}],
            },
            "[operators.op] routes[1].when: not a valid JMESPath expression: unknown function",
        ),
        (
            {"type": "shard", "input": "in", "shards": 3, "prefix": "p", "key": "data.["},
            "[operators.op] key: not a valid JMESPath expression",
        ),
        (
            {"type": "copy", "input": "in", "outputs": ["a", "in"]},
            "[operators.op] outputs: topic 'in' is both an input and an output (a loop)",
        ),
        ({"type": "split", "input": "in", "routes": []}, "[operators.op] routes: a split needs"),
        ({"type": "shard", "input": "in"}, "[operators.op] shards: give `outputs`"),
    ],
)
async def test_bad_config_is_one_error_naming_the_key(
    broker: MemoryBroker, table: dict[str, object], problem: str
) -> None:
    with pytest.raises(ConfigError) as err:
        await make(broker, "op", table)
    assert len(err.value.problems) == 1
    assert err.value.problems[0].startswith(problem), err.value.problems
