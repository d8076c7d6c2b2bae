"""Topic throughput: the memory and the durable local broker beside their bare baselines.

One producer publishes N messages of about 100 bytes in batches; one consumer
group reads in batches and acks. Figure: messages per second from the first
publish to the last ack. Measured in the same run:

- memory broker, against a bare ``asyncio.Queue`` handoff (one put and one
  get at a time);
- local broker (SQLite, WAL), at each durability level, against a bare SQLite
  loop doing the same in one thread: WAL, the batch encoded and inserted in
  one transaction, read back and decoded, deleted in another (the floor is
  0.5x of it);
- single-message publishes from 8 concurrent publishers (group commit) at
  each durability level, against one commit per message in a bare loop.

    python bench/topic_throughput.py [--count 1000000] [--batch 1000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
from chute.broker import Broker
from chute.engine import Runtime
from chute.message import Message
from chute_plugins.brokers.local import LocalBroker
from chute_plugins.brokers.memory import MemoryBroker

PAYLOAD = {"path": "inbox/video-000000.mp4", "size": 1048576, "note": "x" * 40}
SYNC = {"process": "NORMAL", "power": "FULL"}


async def queue_baseline(count: int) -> float:
    queue: asyncio.Queue[dict[str, object]] = asyncio.Queue(maxsize=10_000)

    async def produce() -> None:
        for _ in range(count):
            await queue.put(PAYLOAD)

    async def consume() -> None:
        for _ in range(count):
            await queue.get()

    start = time.perf_counter()
    await asyncio.gather(produce(), consume())
    return count / (time.perf_counter() - start)


def _bare_queue(work: Path, durability: str) -> sqlite3.Connection:
    """The table a hand-written SQLite queue would use: WAL, synchronous as ``durability``."""
    db = sqlite3.connect(str(work / "bare.db"), isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute(f"PRAGMA synchronous = {SYNC[durability]}")
    db.execute("CREATE TABLE q (id INTEGER PRIMARY KEY, body BLOB NOT NULL)")
    return db


def sqlite_baseline(count: int, batch: int, durability: str) -> float:
    """What one would write by hand: WAL, a transaction per batch in, one per batch out."""
    encode, decode = msgspec.msgpack.encode, msgspec.msgpack.decode
    with tempfile.TemporaryDirectory() as work:
        db = _bare_queue(Path(work), durability)
        start = time.perf_counter()
        for first in range(0, count, batch):
            n = min(batch, count - first)
            db.execute("BEGIN")
            db.executemany(
                "INSERT INTO q (body) VALUES (?)", [(encode(PAYLOAD),) for _ in range(n)]
            )
            db.execute("COMMIT")
            rows = db.execute("SELECT id, body FROM q ORDER BY id LIMIT ?", (n,)).fetchall()
            got = [(row_id, decode(body)) for row_id, body in rows]
            db.execute("BEGIN")
            db.executemany("DELETE FROM q WHERE id = ?", [(row_id,) for row_id, _ in got])
            db.execute("COMMIT")
        elapsed = time.perf_counter() - start
        db.close()
    return count / elapsed


def sqlite_single_baseline(count: int, durability: str) -> float:
    """One commit per message: what a publisher without group commit pays."""
    encode = msgspec.msgpack.encode
    with tempfile.TemporaryDirectory() as work:
        db = _bare_queue(Path(work), durability)
        start = time.perf_counter()
        for _ in range(count):
            db.execute("INSERT INTO q (body) VALUES (?)", (encode(PAYLOAD),))
        elapsed = time.perf_counter() - start
        db.close()
    return count / elapsed


async def drain(rt: Runtime, count: int, batch: int) -> float:
    """Publish ``count`` messages to the runtime's ``jobs`` in batches and wait until its
    ``work`` pool has run them all; messages per second."""
    pool = rt.pools["work"]
    begin = time.perf_counter()
    for start in range(0, count, batch):
        n = min(batch, count - start)
        # One key per message: messages that share a key are one item, run one at a time.
        await rt.publish_many(
            "jobs", [Message(key=f"m{start + i}", data=PAYLOAD) for i in range(n)]
        )
    while pool.counters.succeeded < count:
        await pool.changed.wait()
    return count / (time.perf_counter() - begin)  # the last acks are one flush away


async def through(
    broker: Broker, count: int, batch: int, each: Callable[[Any], object] | None = None
) -> float:
    """Publish ``count`` messages in batches, read them back, call ``each`` (if any) on every
    one's data, ack; messages per second. The broker is started here and closed."""
    await broker.start()
    try:
        await broker.declare_topic("bench", capacity=100_000)
        await broker.ensure_group("bench", "g", visibility_timeout=60)

        async def produce() -> None:
            for start in range(0, count, batch):
                n = min(batch, count - start)
                await broker.publish("bench", [Message(key="k", data=PAYLOAD) for _ in range(n)])

        async def consume() -> None:
            seen = 0
            while seen < count:
                messages = await broker.read("bench", "g", "c1", count=batch, block=1.0)
                if each is not None:  # not a call per message where nothing is run
                    for message in messages:
                        each(message.data)
                await broker.ack("bench", "g", [m.id for m in messages])
                seen += len(messages)

        start = time.perf_counter()
        await asyncio.gather(produce(), consume())
        elapsed = time.perf_counter() - start
        stats = await broker.stats("bench")
        assert stats.group("g").acked == count and stats.length == 0, stats
        return count / elapsed
    finally:
        await broker.aclose()


async def local_topic(count: int, batch: int, durability: str) -> tuple[float, int]:
    """(msgs/s, the file's size in bytes after the run)."""
    with tempfile.TemporaryDirectory() as work:
        broker = LocalBroker(f"local?durability={durability}", workdir=Path(work))
        rate = await through(broker, count, batch)
        size = _size(Path(work))
    return rate, size


def _size(work: Path) -> int:
    """The database and its WAL: what the broker keeps on disk."""
    return sum(p.stat().st_size for p in work.glob("broker.db*"))


async def concurrent_singles(count: int, publishers: int, durability: str) -> float:
    with tempfile.TemporaryDirectory() as work:
        broker = LocalBroker(f"local?durability={durability}", workdir=Path(work))
        await broker.start()
        try:
            await broker.declare_topic("bench", capacity=count + 1)
            await broker.ensure_group("bench", "g", visibility_timeout=60)

            async def publisher() -> None:
                for _ in range(count // publishers):
                    await broker.publish("bench", [Message(key="k", data=PAYLOAD)])

            start = time.perf_counter()
            await asyncio.gather(*(publisher() for _ in range(publishers)))
            return (count // publishers * publishers) / (time.perf_counter() - start)
        finally:
            await broker.aclose()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--singles", type=int, default=20_000,
                        help="messages published one at a time by the 8 publishers")  # fmt: skip
    args = parser.parse_args()
    best: dict[str, float] = {}
    sizes: dict[str, int] = {}

    def keep(name: str, rate: float) -> None:
        best[name] = max(best.get(name, 0.0), rate)

    for _ in range(args.rounds):  # interleaved, best of each: all see the same machine noise
        keep("queue", await queue_baseline(args.count))
        keep("memory", await through(MemoryBroker(), args.count, args.batch))
        for level in SYNC:
            keep(f"bare {level}", sqlite_baseline(args.count, args.batch, level))
            rate, sizes[level] = await local_topic(args.count, args.batch, level)
            keep(f"local {level}", rate)
    for _ in range(args.rounds):
        for level in SYNC:
            keep(f"singles {level}", await concurrent_singles(args.singles, 8, level))
            keep(f"bare singles {level}", sqlite_single_baseline(args.singles // 4, level))

    m = 1e6
    print(f"{args.count} messages of ~100 B, batches of {args.batch}, best of {args.rounds}")
    print(f"asyncio.Queue handoff          : {best['queue'] / m:6.3f} M msgs/s")
    print(f"memory broker                  : {best['memory'] / m:6.3f} M msgs/s"
          f"   {best['memory'] / best['queue']:5.2f}x the queue")  # fmt: skip
    for level, sync in SYNC.items():
        local, bare = best[f"local {level}"], best[f"bare {level}"]
        print(f"bare SQLite loop ({sync:<6})     : {bare / m:6.3f} M msgs/s")
        print(f"local broker (durability={level:<7}): {local / m:6.3f} M msgs/s"
              f"   {local / bare:5.2f}x the bare loop (floor 0.50x); file after the run "
              f"{sizes[level] / 2**20:.1f} MiB")  # fmt: skip
    print(f"single-message publishes, 8 concurrent publishers, {args.singles} messages:")
    for level, sync in SYNC.items():
        print(f"  local broker durability={level:<7}: {best[f'singles {level}']:9.0f} msgs/s"
              f"   bare loop, one commit per message ({sync}): "
              f"{best[f'bare singles {level}']:9.0f} msgs/s")  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
