"""Several ``chute run`` processes on one broker, and the scenarios every
networked broker must pass with them: sharing one topic, a node killed with
items in flight, the broker restarted mid-run.

Each node runs ``tests.helpers.redis_tasks:work``, which logs the start and
the end of every item to one file, so the test sees who ran what, and when.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from chute.broker import Broker
from chute.message import Message

from tests.servers import ServerProcess

REPO = Path(__file__).resolve().parent.parent


def write_config(
    tmp_path: Path, url: str, *, track: bool, vt: float = 3.0, state: bool = True
) -> Path:
    """``state``: keep the item state in the broker's server too (Redis only)."""
    path = tmp_path / "chute.toml"
    state_line = f'state = "{url}"\n' if state else ""
    path.write_text(f"""
broker = "{url}"
{state_line}shutdown_grace = "5s"
log_level = "warning"
[topics.jobs]
visibility_timeout = "{vt}s"
[pools.work]
topic = "jobs"
concurrency = 4
batch = 8
track = {str(track).lower()}
executor = {{ type = "python", function = "tests.helpers.redis_tasks:work", path = ["{REPO}"] }}
""")
    return path


def publish(broker: Broker, n: int, *, vt: float, sleep: float = 0.05) -> None:
    """``n`` items of ``sleep`` seconds each on ``jobs``; closes the broker."""

    async def go() -> None:
        await broker.start()
        try:
            await broker.declare_topic("jobs", capacity=100_000)
            # The pools' group exists before the work arrives: a new group starts at the end.
            await broker.ensure_group("jobs", "work", visibility_timeout=vt)
            for start in range(0, n, 100):
                await broker.publish("jobs", [Message(key=f"item-{i}", data={"n": i, "sleep": sleep})
                                              for i in range(start, min(n, start + 100))])  # fmt: skip
        finally:
            await broker.aclose()

    asyncio.run(go())


class Node:
    def __init__(self, name: str, config: Path, log: Path) -> None:
        self.name = name
        env = {**os.environ, "CHUTE_TEST_NODE": name, "CHUTE_TEST_LOG": str(log),
               "PYTHONPATH": str(REPO)}  # fmt: skip
        self.output = config.parent / f"{name}.out"
        with self.output.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "chute", "run", str(config), "--until-idle"],
                stdout=out, stderr=subprocess.STDOUT, cwd=config.parent, env=env,
            )  # fmt: skip

    def wait(self, timeout: float = 90) -> int:
        code = self.proc.wait(timeout)
        assert code == 0, f"{self.name} exited {code}:\n{self.output.read_text()[-3000:]}"
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


def events(log: Path) -> list[tuple[str, str, str, float]]:
    if not log.exists():
        return []
    rows = []
    for line in log.read_text().splitlines():
        event, node, key, t = line.split()
        rows.append((event, node, key, float(t)))
    return rows


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    # The nodes are other processes writing a file: there is no event to wait on.
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.05)


def done_count(log: Path) -> int:
    return sum(1 for e in events(log) if e[0] == "done")


def running_on(log: Path, node: str) -> set[str]:
    """Items the node has started and not finished, as its log says so far."""
    rows = events(log)
    started = {key for event, name, key, _ in rows if event == "start" and name == node}
    return started - {key for event, name, key, _ in rows if event == "done" and name == node}


def two_nodes_share_the_work(config: Path, log: Path, n: int, nodes: list[Node]) -> None:
    """Two nodes drain ``n`` published items: each runs once, both take a real share."""
    nodes += [Node("a", config, log), Node("b", config, log)]
    for node in nodes:
        node.wait()
    done = Counter(key for event, _, key, _ in events(log) if event == "done")
    assert set(done) == {f"item-{i}" for i in range(n)}, "items were lost"
    assert max(done.values()) == 1, "an item ran twice"
    share = Counter(node for event, node, _, _ in events(log) if event == "done")
    assert min(share["a"], share["b"]) >= n // 5, f"not a real share: {share}"


def a_killed_node_is_taken_over(
    config: Path, log: Path, n: int, vt: float, nodes: list[Node]
) -> None:
    """One of two nodes is killed with items in flight: the other runs them within ``vt``."""
    victim, survivor = Node("victim", config, log), Node("survivor", config, log)
    nodes += [victim, survivor]
    # Killed with items in flight (each takes 50 ms): a moment between items,
    # or before its first, would leave nothing to take over.
    wait_until(
        lambda: done_count(log) >= n // 4 and bool(running_on(log, "victim")),
        60,
        "a quarter of the work is done and the victim is running items",
    )
    victim.kill()
    killed_at = time.time()
    survivor.wait()

    rows = events(log)
    done = {key for event, _, key, _ in rows if event == "done"}
    assert done == {f"item-{i}" for i in range(n)}, f"lost: {n - len(done)} items"
    started = {key for event, node, key, _ in rows if event == "start" and node == "victim"}
    finished = {key for event, node, key, _ in rows if event == "done" and node == "victim"}
    interrupted = started - finished
    assert interrupted, "the victim was killed between items: nothing was in flight"
    for key in interrupted:
        retaken = min(t for event, node, k, t in rows
                      if event == "start" and node == "survivor" and k == key)  # fmt: skip
        assert retaken - killed_at <= vt + 5, f"{key} taken over {retaken - killed_at:.1f}s late"


def a_server_restart_loses_nothing(
    server: ServerProcess,
    config: Path,
    log: Path,
    n: int,
    nodes: list[Node],
    *,
    kill: bool,
    may_run_again: int,
) -> None:
    """The broker's server goes away for a second mid-run (terminated or killed -9):
    the node resumes, every item is done, at most ``may_run_again`` extra runs."""
    node = Node("only", config, log)
    nodes.append(node)
    wait_until(lambda: done_count(log) >= n // 4, 60, "some work is done")
    server.stop(kill=kill)
    time.sleep(1.0)  # the server stays away for a second
    server.start()
    back_at = time.time()
    node.wait()

    rows = events(log)
    after = [t for event, _, _, t in rows if event == "done" and t > back_at]
    assert after and min(after) - back_at <= 10, "the node did not resume within 10 s"
    done = Counter(key for event, _, key, _ in rows if event == "done")
    assert set(done) == {f"item-{i}" for i in range(n)}, "items were lost"
    # Only items in flight at the outage (and their batch) may run again.
    assert sum(c - 1 for c in done.values()) <= may_run_again
