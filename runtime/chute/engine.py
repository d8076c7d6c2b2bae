"""The runtime: build a validated graph and run it in one task group.

Start-up order: broker, state store (recovering items a crash left running),
topics and consumer groups, pools and operators, then sources, so nothing is
published before its readers exist. Shutdown runs the same way back: stop
the sources (intake), let pools drain their in-flight items for the grace
period, cancel what is left (given back to the broker, not as an attempt), flush
the final acks under a shield, then close executors, store and broker. Every
shielded step gives up at the stop deadline (``stopping.py``), the final
flush and the closing each a moment later, so a stop takes at most the grace
period plus a few seconds whatever the broker or the store do; ``stop_now``
(a second signal) gives up at once.

Embedding::

    async with Runtime(load_config("configs/demo.toml")) as rt:
        await rt.publish("jobs", {"n": 1}, key="job-1")
        outcome = await rt.wait_for("workers", "job-1")
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio
import msgspec
from anyio.abc import TaskGroup, TaskStatus

from .broker import Broker, TopicStats
from .config import Config, TopicConfig, load_config, where
from .context import PluginContext
from .errors import ConfigError
from .graph import (
    DEAD_SUFFIX,
    operator_topics,
    plugin_options,
    scheme_of,
    validate,
    warnings_of,
)
from .logs import start_lines, summary_line
from .message import Message, new_message
from .outcomes import Final
from .pool import PoolCounters, WorkerPool
from .registry import load_plugin
from .sink import SINK_KEYS, SinkStats
from .sink_runner import SinkRunner, sink_settings
from .source import Source
from .stopping import Deadline
from .store import ItemStatus, StateStore
from .urls import redact_url

log = logging.getLogger("chute")

_CLOSE_WITHIN = 2.0
"""Seconds closing executors, sources, store and broker may take, in all."""

_OUTCOMES_KEPT = 10_000
"""Recent final outcomes remembered for ``wait_for`` callers that ask late."""
_DEAD_KEPT = 1_000
"""Recent dead items whose messages the runtime keeps for ``chute dead requeue``."""


class Outcome(msgspec.Struct, frozen=True):
    status: ItemStatus
    result: Any = None
    """The executor's result when done; the error text when dead."""


class DeadLetter(msgspec.Struct, kw_only=True):
    """A recent dead item, kept so ``chute dead requeue`` can publish it again."""

    pool: str
    key: str
    error: str
    at: float
    attempts: int
    message: Message


class RuntimeStatus(msgspec.Struct, kw_only=True):
    node: str
    broker: str
    """The broker's URL, its password replaced by ``***``."""
    broker_healthy: bool
    broker_problem: str = ""
    """Why the broker is unhealthy (``unreachable``, ``answers READONLY ...``)."""
    topics: list[TopicStats]
    pools: list[PoolCounters]
    operators: dict[str, Any] = {}
    items: dict[str, dict[str, int]] = {}
    sinks: list[SinkStats] = []


def build_broker(url: str, workdir: Path) -> Broker:
    """The broker plugin for ``url``. One that keeps files (``uses_workdir = True`` on
    its class) is also given the working folder."""
    cls = load_plugin("broker", scheme_of(url))
    broker: Broker = cls(url, workdir=workdir) if getattr(cls, "uses_workdir", False) else cls(url)
    return broker


def default_node_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Runtime:
    def __init__(self, config: Config | str | Path, *, until_idle: bool = False) -> None:
        self.config = config if isinstance(config, Config) else load_config(config)
        validate(self.config)
        settings = self.config.settings
        self.node = settings.node or default_node_name()
        self.until_idle = until_idle
        self.base_dir = Path(self.config.base_dir)
        self.workdir = self.config.workdir()
        self.topics: dict[str, TopicConfig] = self._all_topics()
        self.broker: Broker = self._build_broker()
        self.store: StateStore | None = None
        self.pools: dict[str, WorkerPool] = {}
        self.operators: dict[str, Any] = {}
        self.sources: dict[str, tuple[Source, str]] = {}
        self.sinks: dict[str, SinkRunner] = {}
        self.ready = anyio.Event()
        self._stop = anyio.Event()
        self.deadline = Deadline()
        """When shielded steps give up once a stop began: the grace period after it."""
        self._outcomes: OrderedDict[tuple[str, str], Outcome] = OrderedDict()
        self.dead_letters: OrderedDict[tuple[str, str], DeadLetter] = OrderedDict()
        """The most recent dead items of this run (requeue and the dashboard read them)."""
        self._waiters: dict[tuple[str, str], list[anyio.Event]] = {}
        self._task_group: TaskGroup | None = None
        self.api_port: int | None = None
        self._built = False

    # -- building ------------------------------------------------------------

    def _build_broker(self) -> Broker:
        return build_broker(self.config.settings.broker, self.workdir)

    def _context(self, name: str, topic: str) -> PluginContext:
        return PluginContext(
            name=name,
            topic=topic,
            base_dir=self.base_dir,
            workdir=self.workdir,
            node=self.node,
            broker=self.broker,
            store=self.store,
            stable_node=self.config.settings.node or socket.gethostname(),
        )

    def _build_plugin(self, kind: str, label: str, key: str, spec: dict[str, Any],
                      runtime_keys: tuple[str, ...], topic: str) -> Any:  # fmt: skip
        name = label.split(".", 1)[1]
        try:
            cls, options = plugin_options(kind, spec, runtime_keys)
            return cls(options, self._context(name, topic))
        except ConfigError as exc:
            prefix = where(self.config.path, label, key)
            raise ConfigError([f"{prefix}{p}" for p in exc.problems]) from None

    async def _open_store(self) -> None:
        if not any(p.track for p in self.config.pools.values()):
            return
        url = self.config.settings.state
        cls = load_plugin("store", scheme_of(url))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.store = cls(url, self.workdir)
        await self.store.open()
        recovered = await self.store.recover()
        if recovered:
            log.warning("%d items were left running by an earlier crash; they run again", recovered)

    async def build(self) -> None:
        """Connect and build every part; ``run`` does this itself when not done yet.

        Separate so a caller sees a ConfigError or connection error plainly,
        before any task group wraps it.
        """
        if self._built:
            return
        self._built = True
        cfg = self.config
        for warning in warnings_of(cfg):
            log.warning("%s", warning)
        await self.broker.start()
        await self._open_store()
        topics = self.topics
        for topic in sorted(topics):
            await self.broker.declare_topic(topic, capacity=topics[topic].capacity)
        for name, pool_cfg in cfg.pools.items():
            label = f"pools.{name}"
            executor = self._build_plugin(
                "executor", label, "executor.", pool_cfg.executor, (), pool_cfg.topic
            )
            pool = WorkerPool(
                name, pool_cfg, broker=self.broker, executor=executor, store=self.store,
                node=self.node, on_final=self._on_final, deadline=self.deadline,
            )  # fmt: skip
            await pool.prepare(topics[pool_cfg.topic].visibility_timeout)
            self.pools[name] = pool
        if cfg.operators:
            from .operators import PoolErrorRates, build_operator

            error_rate = PoolErrorRates(self.pools.values())
            for name, op_cfg in cfg.operators.items():
                op = build_operator(
                    name, op_cfg, self.broker, node=self.node, error_rate=error_rate
                )
                await op.prepare(self.topics)
                op.deadline = self.deadline
                self.operators[name] = op
        for name, spec in cfg.sinks.items():
            settings = sink_settings(spec)
            sink = self._build_plugin("sink", f"sinks.{name}", "", spec, SINK_KEYS, settings.topic)
            runner = SinkRunner(
                name, settings, sink, self.broker, node=self.node, deadline=self.deadline
            )
            await runner.prepare(topics[settings.topic].visibility_timeout)
            self.sinks[name] = runner
        for name, spec in cfg.sources.items():
            topic = str(spec["topic"])
            source = self._build_plugin("source", f"sources.{name}", "", spec, ("topic",), topic)
            self.sources[name] = (source, topic)

    def unready_reasons(self) -> list[str]:
        """Why the runtime should not get traffic now (empty when ready): ``/readyz``."""
        reasons = []
        if not self.ready.is_set():
            reasons.append("starting: sources and pools are not all running yet")
        if self._stop.is_set():
            reasons.append("stopping")
        if not getattr(self.broker, "healthy", True):
            reasons.append(f"the broker {self.config.settings.broker} is unreachable")
        if self.store is not None and not getattr(self.store, "healthy", True):
            reasons.append(f"the state store {self.config.settings.state} is unreachable")
        return reasons

    def known_topics(self) -> set[str]:
        return set(self.topics)

    def _all_topics(self) -> dict[str, TopicConfig]:
        cfg = self.config
        names: set[str] = set(cfg.topics)
        for name, pool in cfg.pools.items():
            names.update({pool.topic, name + DEAD_SUFFIX, *([pool.output] if pool.output else [])})
        for name, op in cfg.operators.items():
            inputs, outputs = operator_topics(op)
            names.update([*inputs, *outputs, name + DEAD_SUFFIX])
        for spec in cfg.sources.values():
            names.add(str(spec["topic"]))
        for name, spec in cfg.sinks.items():
            names.update({str(spec["topic"]), name + DEAD_SUFFIX})
        return {n: cfg.topics.get(n, TopicConfig()) for n in names}

    # -- running -------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run until ``stop()`` (or, with ``until_idle``, until every topic is drained)."""
        grace = float(self.config.settings.shutdown_grace)
        try:
            await self.build()
            for line in start_lines(self.config):
                log.info("%s", line)
            # Services (the API, the idle watcher) outlive the drain and end
            # once the pools, operators and sources have.
            async with anyio.create_task_group() as services:
                if self.config.api.enabled:
                    from .api import serve_api

                    await services.start(serve_api, self)
                if self.until_idle:
                    services.start_soon(self._stop_when_idle)
                if self.config.settings.summary_every > 0:
                    services.start_soon(
                        self._log_summaries, float(self.config.settings.summary_every)
                    )
                await self._run_graph(grace, task_status)
                services.cancel_scope.cancel()
            with anyio.CancelScope(shield=True):  # summary_line bounds itself
                log.info("finished: %s", await summary_line(self))
        finally:
            with self.deadline.shield(extra=_CLOSE_WITHIN) as closing:
                closing.deadline = min(closing.deadline, anyio.current_time() + _CLOSE_WITHIN)
                await self._close()
            if closing.cancelled_caught:
                log.warning("closing took longer than %gs: abandoned", _CLOSE_WITHIN)

    async def _log_summaries(self, every: float) -> None:
        while True:
            await anyio.sleep(every)
            log.info("%s", await summary_line(self))

    async def _run_graph(self, grace: float, task_status: TaskStatus[None]) -> None:
        async with anyio.create_task_group() as tg:
            pools_stop = anyio.Event()
            for pool in self.pools.values():
                tg.start_soon(pool.run, pools_stop, grace)
            operators_scope = anyio.CancelScope()
            tg.start_soon(self._run_operators, operators_scope, pools_stop)
            sources_scope = anyio.CancelScope()
            tg.start_soon(self._run_sources, sources_scope)
            self.ready.set()
            task_status.started()
            await self._stop.wait()
            log.info("stopping: sources first, then %gs for items in flight", grace)
            self.deadline.set(anyio.current_time() + grace)
            sources_scope.cancel()
            pools_stop.set()
            # Operators move messages quickly; give them the same deadline.
            operators_scope.deadline = self.deadline.at
            tg.cancel_scope.deadline = self.deadline.at + 5.0

    async def _run_sources(self, scope: anyio.CancelScope) -> None:
        with scope:
            async with anyio.create_task_group() as tg:
                for name, (source, topic) in self.sources.items():
                    tg.start_soon(self._run_source, name, source, topic)

    async def _run_source(self, name: str, source: Source, topic: str) -> None:
        async def emit(messages: Sequence[Message]) -> list[str]:
            return await self.broker.publish(topic, messages)

        await source.run(emit)
        log.info("source %s finished", name)

    async def _run_operators(self, scope: anyio.CancelScope, stop: anyio.Event) -> None:
        with scope:
            async with anyio.create_task_group() as tg:
                for op in self.operators.values():
                    tg.start_soon(op.run, stop)
                for sink in self.sinks.values():  # sinks move messages like operators
                    tg.start_soon(sink.run, stop)

    def stop(self) -> None:
        """Begin a graceful shutdown (safe to call more than once)."""
        self._stop.set()

    def stop_now(self) -> None:
        """Give up on everything in hand (a second signal): shielded steps end now.

        The caller cancels the task running ``run``; what did not finish stays
        pending and is delivered again.
        """
        self._stop.set()
        self.deadline.expire()

    async def _close(self) -> None:
        for pool in self.pools.values():
            await _quietly(pool.executor.aclose(), f"closing pool {pool.name}'s executor")
        for name, (source, _) in self.sources.items():
            await _quietly(source.aclose(), f"closing source {name}")
        for name, runner in self.sinks.items():
            await _quietly(runner.sink.aclose(), f"closing sink {name}")
        if self.store is not None:
            await _quietly(self.store.aclose(), "closing the state store")
        await _quietly(self.broker.aclose(), "closing the broker")

    # -- idle detection ----------------------------------------------------------

    async def _stop_when_idle(self) -> None:
        for source, _ in self.sources.values():
            caught_up = getattr(source, "caught_up", None)
            if caught_up is not None:
                await caught_up()
        await self.wait_idle()
        log.info("every topic is drained: stopping (--until-idle)")
        self.stop()

    async def wait_idle(self) -> None:
        """Return once no pool runs anything and every group has consumed every topic."""
        quiet_checks = 0
        while quiet_checks < 2:  # idle twice in a row: nothing was between two hands
            events = [pool.changed for pool in self.pools.values()]
            if await self._is_idle():
                quiet_checks += 1
                await anyio.sleep(0.02)
                continue
            quiet_checks = 0
            # Pools announce finished items; operators and redeliveries do not,
            # so look again at least every 100 ms.
            with anyio.move_on_after(0.1):
                async with anyio.create_task_group() as tg:
                    for event in events:
                        tg.start_soon(_set_then_cancel, event, tg)
                    if not events:  # no pools (sinks only): nothing announces, so wait here
                        await anyio.sleep(0.1)

    async def _is_idle(self) -> bool:
        if any(pool.counters.in_flight for pool in self.pools.values()):
            return False
        for topic in self.topics:
            stats = await self.broker.stats(topic)
            # Only the groups this graph reads with: a group left behind on a
            # shared broker (a renamed pool) is never drained by anyone here.
            mine = self._groups.get(topic, set())
            if any(g.lag or g.pending for g in stats.groups if g.name in mine):
                return False
        return True

    @property
    def _groups(self) -> dict[str, set[str]]:
        """Topic -> the consumer groups this graph's pools, operators and sinks read it with."""
        groups: dict[str, set[str]] = {}
        for pool in self.pools.values():
            groups.setdefault(pool.topic, set()).add(pool.group)
        for op in self.operators.values():
            for topic in op.inputs:
                groups.setdefault(topic, set()).add(op.group)
        for sink in self.sinks.values():
            groups.setdefault(sink.topic, set()).add(sink.group)
        return groups

    # -- outcomes ----------------------------------------------------------------

    async def _on_final(self, pool: WorkerPool, finals: list[Final]) -> None:
        feeding = [(name, source) for name, (source, topic) in self.sources.items()
                   if topic == pool.topic]  # fmt: skip
        for message, status, result in finals:
            key = (pool.name, message.key or message.id)
            self._outcomes[key] = Outcome(status=status, result=result)
            for event in self._waiters.pop(key, ()):
                event.set()
            if status is ItemStatus.DEAD:
                self.dead_letters[key] = DeadLetter(
                    pool=pool.name, key=key[1], error=str(result), at=time.time(),
                    attempts=message.attempt, message=message,
                )  # fmt: skip
                if len(self.dead_letters) > _DEAD_KEPT:
                    self.dead_letters.popitem(last=False)
            for name, source in feeding:
                await _quietly(
                    source.item_finished(key[1], status), f"source {name} finishing {key[1]!r}"
                )
        while len(self._outcomes) > _OUTCOMES_KEPT:
            self._outcomes.popitem(last=False)

    async def wait_for(self, pool: str, key: str) -> Outcome:
        """Wait until the item ``key`` is done or dead in ``pool``."""
        while (pool, key) not in self._outcomes:
            event = anyio.Event()
            self._waiters.setdefault((pool, key), []).append(event)
            await event.wait()
        return self._outcomes[(pool, key)]

    # -- publishing and status -----------------------------------------------------

    async def publish(self, topic: str, data: Any, *, key: str = "",
                      headers: dict[str, str] | None = None) -> str:  # fmt: skip
        [message_id] = await self.broker.publish(
            topic, [new_message(data, key=key, headers=headers)]
        )
        return message_id

    async def publish_many(self, topic: str, messages: Sequence[Message]) -> list[str]:
        return await self.broker.publish(topic, messages)

    async def status(self) -> RuntimeStatus:
        topics = [await self.broker.stats(t) for t in sorted(self.topics)]
        items = await self.store.counts() if self.store is not None else {}
        operators = {}
        for name, op in self.operators.items():
            stats = getattr(op, "stats", None)
            operators[name] = msgspec.to_builtins(stats()) if stats else {}
        return RuntimeStatus(
            node=self.node,
            broker=redact_url(self.config.settings.broker),
            broker_healthy=bool(getattr(self.broker, "healthy", True)),
            broker_problem=str(getattr(self.broker, "problem", "")),
            topics=topics,
            pools=[p.counters for p in self.pools.values()],
            operators=operators,
            items=items,
            sinks=[s.stats() for s in self.sinks.values()],
        )

    # -- embedding as an async context manager ---------------------------------------

    async def __aenter__(self) -> Runtime:
        try:
            await self.build()
        except BaseException:
            with anyio.move_on_after(_CLOSE_WITHIN, shield=True):
                await self._close()
            raise
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        try:
            await self._task_group.start(self.run)
        except BaseException as exc:
            await self._task_group.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> bool | None:  # fmt: skip
        self.stop()
        assert self._task_group is not None
        return await self._task_group.__aexit__(exc_type, exc, tb)


async def _set_then_cancel(event: anyio.Event, tg: TaskGroup) -> None:
    await event.wait()
    tg.cancel_scope.cancel()


async def _quietly(awaitable: Any, what: str) -> None:
    """Shutdown steps never stop the other steps: a failure is logged."""
    try:
        await awaitable
    except Exception:
        log.exception("error while %s", what)
