"""``chute groups list|prune``: consumer groups on a config's topics, and leftovers.

A pool or operator renamed or removed leaves its consumer group in the
broker (Redis keeps it). It no longer holds back publishers, but it keeps the
entries it has not consumed from being trimmed; these commands show it and
delete it.
"""

from __future__ import annotations

from typing import Any

import anyio
import click

from .cli import _fail, _fail_config, _load
from .config import Config
from .errors import ChuteError, ConfigError
from .graph import operator_topics, scheme_of


@click.group()
def groups() -> None:
    """Consumer groups on the config's topics: which the config declares, and leftovers."""


def declared_groups(cfg: Config) -> dict[str, set[str]]:
    """Topic -> the consumer groups the config's pools and operators read it with."""
    declared: dict[str, set[str]] = {}
    for name, pool in cfg.pools.items():
        declared.setdefault(pool.topic, set()).add(pool.group or name)
    for name, op in cfg.operators.items():
        for topic in operator_topics(op)[0]:
            declared.setdefault(topic, set()).add(op.group or name)
    for name, spec in cfg.sinks.items():
        declared.setdefault(str(spec["topic"]), set()).add(str(spec.get("group") or name))
    return declared


async def _group_rows(cfg: Config, prune: bool) -> list[tuple[str, str, bool, str]]:
    """(topic, group, declared, what is known about it); with ``prune``, delete leftovers."""
    from .engine import Runtime

    runtime = Runtime(cfg)
    broker: Any = runtime.broker
    if not hasattr(broker, "group_names"):
        raise click.UsageError(
            f"the {scheme_of(cfg.settings.broker)} broker keeps no consumer groups between runs"
        )
    declared = declared_groups(cfg)
    rows: list[tuple[str, str, bool, str]] = []
    await broker.start()
    try:
        for topic in sorted(runtime.topics):
            idle = await broker.group_names(topic)
            stats = await broker.stats(topic)
            for group in sorted(idle):
                mine = group in declared.get(topic, set())
                g = stats.group(group)
                seen = "never used" if idle[group] is None else f"idle {idle[group]:.0f}s"
                note = f"lag {g.lag}, pending {g.pending}, {seen}"
                if prune and not mine:
                    await broker.delete_group(topic, group)
                    note += ": deleted"
                rows.append((topic, group, mine, note))
    finally:
        await broker.aclose()
    return rows


@groups.command("list")
@click.argument("config", type=click.Path(dir_okay=False))
def groups_list(config: str) -> None:
    """Every consumer group on CONFIG's topics; those CONFIG does not declare are leftovers."""
    _print_groups(config, prune=False)


@groups.command("prune")
@click.argument("config", type=click.Path(dir_okay=False))
def groups_prune(config: str) -> None:
    """Delete the consumer groups on CONFIG's topics that CONFIG does not declare.

    A leftover group (a pool renamed or removed) keeps entries from being
    trimmed; deleting it drops what it had not consumed, for it alone.
    """
    _print_groups(config, prune=True)


def _print_groups(config: str, *, prune: bool) -> None:
    try:
        cfg = _load(config)
    except ConfigError as exc:
        _fail_config(exc)
    try:
        rows = anyio.run(_group_rows, cfg, prune)
    except (ChuteError, BaseExceptionGroup) as exc:
        _fail(exc)
    for topic, group, mine, note in rows:
        click.echo(f"{topic} {group}: {'declared' if mine else 'not declared'}, {note}")
    if not prune and any(not mine for _, _, mine, _ in rows):
        click.echo(f"(`chute groups prune {config}` deletes the groups not declared)")
