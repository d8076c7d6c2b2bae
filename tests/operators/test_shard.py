"""shard: stable placement, minimal movement when a shard is unhealthy, and the way back."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import anyio
import pytest
from chute.config import Config, config_from_dict
from chute.engine import Runtime
from chute.operators import Shard, ShardRing
from chute_plugins.brokers.memory import MemoryBroker

from .helpers import drain, make, publish, take, watch

KEYS = [f"photo-{i:05d}.jpg" for i in range(10_000)]
SHARD4 = {"type": "shard", "input": "photos", "shards": 4, "prefix": "photos"}
TOPICS = [f"photos-{i}" for i in range(4)]


async def _placement(broker: MemoryBroker, op: Shard, keys: list[str]) -> dict[str, str]:
    """Publish one message per key, run the operator, and see where each key landed."""
    await publish(broker, "photos", [(k, {"path": k}) for k in keys])
    await drain(op)
    return {m.key: topic for topic in TOPICS for m in await take(broker, topic)}


async def test_one_shard_down_moves_only_its_keys_evenly_and_back(broker: MemoryBroker) -> None:
    op = await make(broker, "sharder", SHARD4)
    assert isinstance(op, Shard)
    await watch(broker, *TOPICS)
    before = await _placement(broker, op, KEYS)
    assert len(before) == len(KEYS)
    per_shard = Counter(before.values())
    assert all(abs(n - 2500) <= 250 for n in per_shard.values()), per_shard

    op.mark_down("photos-2")
    assert op.stats().unhealthy == {"photos-2": "down"}
    during = await _placement(broker, op, KEYS)
    moved = {k: during[k] for k in KEYS if during[k] != before[k]}
    assert {before[k] for k in moved} == {"photos-2"}  # no key of a healthy shard moved
    assert len(moved) == per_shard["photos-2"]  # and every key of the down shard did
    share = Counter(moved.values())
    assert set(share) == {"photos-0", "photos-1", "photos-3"}
    for n in share.values():
        assert abs(n - len(moved) / 3) <= 0.1 * len(moved) / 3, share
    assert op.stats().rerouted == len(moved)

    op.mark_down(2, down=False)
    assert op.stats().unhealthy == {}
    assert await _placement(broker, op, KEYS) == before  # every key back on its first shard


@pytest.mark.parametrize("down", range(4))
def test_ring_moves_only_the_failed_shards_keys_for_any_shard(down: int) -> None:
    ring = ShardRing(4)
    encoded = [k.encode() for k in KEYS]
    first = [ring.first(k) for k in encoded]
    healthy = [i != down for i in range(4)]
    after = [ring.pick(k, healthy) for k in encoded]
    moved = Counter(a for f, a in zip(first, after, strict=True) if f != a)
    assert all(f == a for f, a in zip(first, after, strict=True) if f != down)
    assert sum(moved.values()) == first.count(down)
    assert all(abs(n - sum(moved.values()) / 3) <= sum(moved.values()) / 30 for n in moved.values())


def test_two_shards_down_and_all_down() -> None:
    ring = ShardRing(4)
    encoded = [k.encode() for k in KEYS]
    two_down = [True, False, True, False]
    picks = Counter(ring.pick(k, two_down) for k in encoded)
    assert set(picks) == {0, 2}
    # With no healthy shard, keys stay on their first choice rather than vanish.
    assert all(ring.pick(k, [False] * 4) == ring.first(k) for k in encoded[:100])


def test_placement_is_the_same_in_every_process() -> None:
    """Pinned values: a change here would reshuffle every user's shards on upgrade."""
    ring = ShardRing(4)
    assert [ring.first(f"photo-{i}".encode()) for i in range(8)] == [3, 1, 3, 1, 2, 0, 2, 0]
    assert [list(ring.order(f"photo-{i}".encode())) for i in range(3)] == [
        [3, 2, 1, 0],
        [1, 2, 3, 0],
        [3, 0, 1, 2],
    ]
    code = (
        "from chute.operators import ShardRing;"
        "print([ShardRing(4).first(f'photo-{i}'.encode()) for i in range(8)])"
    )
    for seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", code],
            env={"PYTHONHASHSEED": seed, "PATH": ""},
            capture_output=True,
            text=True,
            check=True,
        )
        assert out.stdout.strip() == "[3, 1, 3, 1, 2, 0, 2, 0]"


async def test_key_expression_and_bad_keys(broker: MemoryBroker) -> None:
    op = await make(broker, "by-user", {**SHARD4, "key": "data.user"})
    await watch(broker, *TOPICS, "by-user.dead")
    rows: list[tuple[str, object]] = [(f"m{i}", {"user": f"user-{i % 5}"}) for i in range(50)]
    rows += [("nouser", {"other": 1}), ("num", {"user": 7})]
    await publish(broker, "photos", rows)
    await drain(op)
    where: dict[str, set[str]] = {}
    for topic in TOPICS:
        for m in await take(broker, topic):
            where.setdefault(str(m.data["user"]), set()).add(topic)
    assert all(len(topics) == 1 for topics in where.values())  # one shard per user
    assert set(where) == {f"user-{i}" for i in range(5)} | {"7"}  # numbers are keys too
    dead = await take(broker, "by-user.dead")
    assert [m.key for m in dead] == ["nouser"]
    assert "null" in dead[0].headers["error"]


async def test_health_from_error_rate_and_stall(broker: MemoryBroker) -> None:
    rates = {"photos-1": 0.9}
    op = await make(
        broker,
        "sharder",
        {**SHARD4, "health": {"error_rate": 0.5, "stall": "5ms"}},
        error_rate=lambda topic: rates.get(topic, 0.0),
    )
    assert isinstance(op, Shard)
    await broker.ensure_group("photos-3", "pool", visibility_timeout=300)
    await op.check_health()
    assert list(op.stats().unhealthy) == ["photos-1"]
    assert "error rate 0.90" in op.stats().unhealthy["photos-1"]

    # photos-3's pool takes a delivery and never finishes it.
    await publish(broker, "photos-3", [("stuck", {})])
    stuck = await broker.read("photos-3", "pool", "w", count=1, block=None)
    await anyio.sleep(0.05)
    rates.clear()
    await op.check_health()
    assert list(op.stats().unhealthy) == ["photos-3"]
    assert op.stats().unhealthy["photos-3"].startswith("stalled")

    await broker.ack("photos-3", "pool", [m.id for m in stuck])  # the pool recovers
    await op.check_health()
    assert op.stats().unhealthy == {}
    assert op.healthy == [True] * 4


async def test_running_operator_watches_health_and_reroutes(broker: MemoryBroker) -> None:
    looked = anyio.Event()

    def error_rate(topic: str) -> float:
        looked.set()
        return 1.0 if topic == "photos-0" else 0.0

    op = await make(
        broker, "sharder", {**SHARD4, "health": {"interval": "1ms"}}, error_rate=error_rate
    )
    await watch(broker, *TOPICS)
    async with anyio.create_task_group() as tg:
        tg.start_soon(op.run)
        await looked.wait()
        await publish(broker, "photos", [(k, {}) for k in KEYS[:400]])
        got = dict.fromkeys(TOPICS, 0)
        while sum(got.values()) < 400:
            for topic in TOPICS:
                got[topic] += len(await take(broker, topic))
            if sum(got.values()) < 400:  # block on one shard until more arrives
                got["photos-1"] += len(await take(broker, "photos-1", wait=1.0))
        tg.cancel_scope.cancel()
    assert got["photos-0"] == 0 and sum(got.values()) == 400


def _sharder_with_api(tmp_path: Path) -> Config:
    doc = {
        "workdir": str(tmp_path / ".chute"),
        "api": {"enabled": True, "port": 0},
        "topics": {"photos": {}, **{t: {} for t in TOPICS}},
        "operators": {"sharder": SHARD4},
    }
    return config_from_dict(doc, path="test.toml", base_dir=str(tmp_path))


async def test_a_shard_is_marked_down_and_up_through_the_api(tmp_path: Path) -> None:
    import aiohttp

    config = _sharder_with_api(tmp_path)
    async with Runtime(config) as rt, aiohttp.ClientSession() as http:
        token = (tmp_path / ".chute" / "api.token").read_text().strip()
        http.headers["Authorization"] = f"Bearer {token}"
        url = f"http://127.0.0.1:{rt.api_port}/v1/operators/sharder/shards"
        async with http.post(f"{url}/photos-2", json={"down": True}) as resp:
            assert resp.status == 200, await resp.text()
        assert rt.operators["sharder"].healthy == [True, True, False, True]
        async with http.post(f"{url}/2", json={"down": False}) as resp:
            assert resp.status == 200
        assert rt.operators["sharder"].healthy == [True] * 4
        async with http.post(f"{url}/photos-9", json={"down": True}) as resp:
            assert resp.status == 404 and "no shard" in (await resp.json())["error"]
        async with http.post(f"{url}/1", json={"down": "yes"}) as resp:
            assert resp.status == 400
        async with http.post(f"{url.replace('sharder', 'nope')}/1", json={"down": True}) as resp:
            assert resp.status == 404


async def test_the_shard_command_marks_a_shard_of_a_running_runtime(tmp_path: Path) -> None:
    config = _sharder_with_api(tmp_path)
    async with Runtime(config) as rt:
        url = f"http://127.0.0.1:{rt.api_port}"

        async def chute(*args: str) -> subprocess.CompletedProcess[bytes]:
            # The config has no token: the CLI finds the one the runtime wrote.
            cli = [sys.executable, "-m", "chute", "shard", *args, "--url", url]
            return await anyio.run_process(cli, check=False, cwd=tmp_path)

        down = await chute("sharder", "photos-2")
        assert down.returncode == 0, down.stderr
        assert down.stdout.decode().strip() == "sharder: shard photos-2 is down"
        assert rt.operators["sharder"].healthy == [True, True, False, True]
        up = await chute("sharder", "2", "--up")
        assert up.stdout.decode().strip() == "sharder: shard 2 is up"
        assert rt.operators["sharder"].healthy == [True] * 4
        unknown = await chute("sharder", "photos-9")
        assert unknown.returncode != 0 and b"no shard" in unknown.stderr
