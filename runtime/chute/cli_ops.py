"""The operator's commands: ``status`` (``--watch``), ``dead list|show|requeue|purge``, ``tail``.

Each reads the running runtime's API when it answers and the state store
otherwise, so they work on a stopped pipeline too.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import anyio
import click
import msgspec

from .autoscale import describe_scale
from .cli import (
    Operational,
    _api_token,
    _api_url,
    _fail,
    _fail_config,
    _load,
    _workdir,
)
from .config import Config
from .errors import ChuteError, ConfigError
from .graph import scheme_of


def _config(path: str) -> Config:
    try:
        return _load(path)
    except ConfigError as exc:
        _fail_config(exc)


def _never_ran(cfg: Config) -> bool:
    """A local SQLite state that was never created: the config never ran here."""
    return scheme_of(cfg.settings.state) == "sqlite" and not _workdir(cfg).exists()


async def _open_store(cfg: Config) -> Any:
    from .registry import load_plugin

    store = load_plugin("store", scheme_of(cfg.settings.state))(cfg.settings.state, _workdir(cfg))
    await store.open()
    return store


async def _api_get(url: str, path: str, token: str | None) -> Any:
    """GET from the runtime's API; None when no runtime answers."""
    import aiohttp

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        async with (
            aiohttp.ClientSession(headers=headers) as session,
            session.get(f"{url}{path}", timeout=aiohttp.ClientTimeout(2)) as r,
        ):
            if r.status == 200:
                return await r.json()
            raise Operational(f"{url}{path}: {(await r.json(content_type=None)).get('error')}")
    except (aiohttp.ClientConnectionError, TimeoutError):
        return None


# -- status -----------------------------------------------------------------


@click.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--url", default=None, help="The runtime's API, for live pool figures.")
@click.option("--token", default=None, envvar="CHUTE_TOKEN")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--watch", is_flag=True, help="Redraw every --interval seconds until Ctrl-C.")
@click.option("--interval", default=2.0, show_default=True, type=float)
def status(config: str, url: str | None, token: str | None, as_json: bool, watch: bool,
           interval: float) -> None:  # fmt: skip
    """Item counts and recent failures from the state store; live figures if running."""
    cfg = _config(config)
    if _never_ran(cfg):
        click.echo(f"{config} has not run here yet (no working folder {_workdir(cfg)})")
        return
    api = _api_url(cfg, url) if (url or cfg.api.enabled) else None
    try:
        while True:
            try:
                report = anyio.run(_status, cfg, api, _api_token(cfg, token))
            except (ChuteError, BaseExceptionGroup) as exc:
                _fail(exc)
            text = json.dumps(report, indent=2, default=str) if as_json else _render(report, api)
            if not watch:
                click.echo(text)
                return
            click.clear()
            click.echo(f"{config} at {time.strftime('%H:%M:%S')} (Ctrl-C to stop)\n{text}")
            sys.stdout.flush()
            time.sleep(interval)
    except KeyboardInterrupt:  # how a watch ends
        return


def _render(report: dict[str, Any], api: str | None) -> str:
    lines = []
    for pool, counts in sorted(report["items"].items()):
        summary = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        lines.append(f"pool {pool}: {summary}")
    if report["failures"]:
        lines.append("recent failures:")
        for f in report["failures"]:
            lines.append(
                f"  [{f['status']}] {f['pool']} {f['key']!r} x{f['attempts']}: {f['last_error']}"
            )
    live = report.get("live")
    if live:
        if not live.get("broker_healthy", True):
            problem = live.get("broker_problem") or "unreachable"
            lines.append(f"broker {live['broker']}: unhealthy, {problem}")
        for pool in live["pools"]:
            lines.append(
                f"live pool {pool['name']}: concurrency {pool['concurrency']}, in flight "
                f"{pool['in_flight']}, ok {pool['succeeded']}, failed {pool['failed']}, dead {pool['dead']}"
            )
            if pool.get("healthy") is False:
                lines.append(f"  UNHEALTHY, intake paused: {pool.get('fault', '')}")
            if pool.get("scale"):
                lines.append(f"  scaling: {describe_scale(pool['scale'])}")
        for topic in live["topics"]:
            if not topic["groups"]:
                lines.append(
                    f"live topic {topic['topic']}: no consumer group; holds {topic['length']} "
                    f"of {topic['capacity']}, dropped {topic.get('dropped', 0)}"
                )
            for g in topic["groups"]:
                lines.append(
                    f"live topic {topic['topic']} group {g['name']}: lag {g['lag']}, "
                    f"pending {g['pending']}, oldest {g['oldest_pending_age']:.1f}s"
                )
    elif api:
        lines.append("(the runtime is not running, or its API is not reachable)")
    return "\n".join(lines)


async def _status(cfg: Config, url: str | None, token: str | None) -> dict[str, Any]:
    report: dict[str, Any] = {"items": {}, "failures": [], "live": None}
    store = await _open_store(cfg)
    try:
        report["items"] = await store.counts()
        report["failures"] = msgspec.to_builtins(await store.failures(10))
    finally:
        await store.aclose()
    if url:
        report["live"] = await _api_get(url, "/v1/status", token)
    return report


# -- dead letters -------------------------------------------------------------


_config_option = click.option(
    "--config", "config_path", required=True, type=click.Path(dir_okay=False),
    help="The pipeline's config (its state store, and its API when running).",
)  # fmt: skip
_url_option = click.option("--url", default=None, help="The runtime's API.")
_token_option = click.option("--token", default=None, envvar="CHUTE_TOKEN")


@click.group()
def dead() -> None:
    """Dead letters of a pool: list, show, requeue (run again) or purge."""


def _pool_of(cfg: Config, pool: str) -> None:
    if pool not in cfg.pools:
        import difflib

        near = difflib.get_close_matches(pool, list(cfg.pools), n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise click.UsageError(f"no pool {pool!r} in {cfg.path}{hint}")


async def _dead_items(cfg: Config, pool: str, url: str | None, token: str | None) -> list[Any]:
    from .dead import store_dead

    if url and (live := await _api_get(url, f"/v1/dead/{pool}", token)) is not None:
        return list(live)
    if not cfg.pools[pool].track:
        return []
    store = await _open_store(cfg)
    try:
        return [msgspec.to_builtins(d) for d in await store_dead(store, pool)]
    finally:
        await store.aclose()


def _run(cfg: Config, fn: Any, *args: Any) -> Any:
    try:
        return anyio.run(fn, *args)
    except (ChuteError, BaseExceptionGroup) as exc:
        _fail(exc)


@dead.command("list")
@click.argument("pool")
@_config_option
@_url_option
@_token_option
def dead_list(pool: str, config_path: str, url: str | None, token: str | None) -> None:
    """POOL's dead items, newest first: key, attempts, when, why."""
    cfg = _config(config_path)
    _pool_of(cfg, pool)
    if _never_ran(cfg):
        click.echo(f"{config_path} has not run here yet")
        return
    api = _api_url(cfg, url) if (url or cfg.api.enabled) else None
    items = _run(cfg, _dead_items, cfg, pool, api, _api_token(cfg, token))
    if not items:
        click.echo(f"pool {pool}: no dead items")
    for d in items:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(d["at"]))
        click.echo(f"{d['key']}\tx{d['attempts']}\t{when}\t{d['error'].splitlines()[0][:200]}")


@dead.command("show")
@click.argument("pool")
@click.argument("keys", nargs=-1, required=True)
@_config_option
@_url_option
@_token_option
def dead_show(pool: str, keys: tuple[str, ...], config_path: str, url: str | None,
              token: str | None) -> None:  # fmt: skip
    """Everything known about POOL's dead KEYS (JSON): the error, attempts, data if held."""
    cfg = _config(config_path)
    _pool_of(cfg, pool)
    api = _api_url(cfg, url) if (url or cfg.api.enabled) else None
    items = {d["key"]: d for d in _run(cfg, _dead_items, cfg, pool, api, _api_token(cfg, token))}
    missing = [k for k in keys if k not in items]
    for key in keys:
        if key in items:
            click.echo(json.dumps(items[key], indent=2, default=str))
    if missing:
        raise click.ClickException(f"not dead in pool {pool}: {', '.join(missing)}")


async def _act(cfg: Config, action: str, pool: str, keys: list[str], url: str | None,
               token: str | None) -> dict[str, Any]:  # fmt: skip
    """Through the running runtime when it answers (it also holds the messages), else the store."""
    from .cli import _api_post

    if url:
        try:
            body = msgspec.json.encode({"keys": keys})
            return await _api_post(url, f"/v1/dead/{pool}/{action}", token, body)
        except Operational:
            pass  # not running: the store is all there is
    from .dead import store_dead

    store = await _open_store(cfg)
    try:
        keys = keys or [d.key for d in await store_dead(store, pool)]
        return {"forgotten": await store.forget_dead(pool, keys), "republished": []}
    finally:
        await store.aclose()


def _dead_action(action: str, pool: str, keys: tuple[str, ...], config_path: str,
                 url: str | None, token: str | None) -> None:  # fmt: skip
    cfg = _config(config_path)
    _pool_of(cfg, pool)
    if _never_ran(cfg):
        click.echo(f"{config_path} has not run here yet")
        return
    api = _api_url(cfg, url) if (url or cfg.api.enabled) else None
    done = _run(cfg, _act, cfg, action, pool, list(keys), api, _api_token(cfg, token))
    touched = set(done.get("forgotten", [])) | set(done.get("republished", []))
    touched |= set(done.get("dropped", []))
    for key in sorted(touched):
        again = " (published again)" if key in done.get("republished", []) else ""
        verb = "requeued" if action == "requeue" else "purged"
        click.echo(f"{verb} {key}{again}")
    unknown = [k for k in keys if k not in touched]
    if unknown:
        raise click.ClickException(f"not dead in pool {pool}: {', '.join(unknown)}")
    if not touched:
        click.echo(f"pool {pool}: no dead items")


@dead.command("requeue")
@click.argument("pool")
@click.argument("keys", nargs=-1)
@_config_option
@_url_option
@_token_option
def dead_requeue(pool: str, keys: tuple[str, ...], config_path: str, url: str | None,
                 token: str | None) -> None:  # fmt: skip
    """Let POOL's dead KEYS (all when none given) run again.

    The state store forgets they died, so they run when they arrive again (a
    watch-folder file moved back); a running runtime also publishes the
    messages it still holds.
    """
    _dead_action("requeue", pool, keys, config_path, url, token)


@dead.command("purge")
@click.argument("pool")
@click.argument("keys", nargs=-1)
@_config_option
@_url_option
@_token_option
def dead_purge(pool: str, keys: tuple[str, ...], config_path: str, url: str | None,
               token: str | None) -> None:  # fmt: skip
    """Forget POOL's dead KEYS (all when none given) without running them."""
    _dead_action("purge", pool, keys, config_path, url, token)


# -- tail ------------------------------------------------------------------------


@click.command()
@click.argument("topic")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="Find the runtime's API from this config.")  # fmt: skip
@click.option("--url", default=None, help="The runtime's API, default http://127.0.0.1:8765.")
@click.option("--token", default=None, envvar="CHUTE_TOKEN")
def tail(topic: str, config_path: str | None, url: str | None, token: str | None) -> None:
    """Print TOPIC's messages as they are published (NDJSON), until Ctrl-C."""
    cfg = _config(config_path) if config_path else None
    base = _api_url(cfg, url)
    try:
        anyio.run(_tail, base, topic, _api_token(cfg, token))
    except KeyboardInterrupt:
        return
    except (ChuteError, BaseExceptionGroup) as exc:
        _fail(exc)


async def _tail(url: str, topic: str, token: str | None) -> None:
    import aiohttp

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        async with (
            aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout()) as session,
            session.get(f"{url}/v1/topics/{topic}/tail") as resp,
        ):
            if resp.status != 200:
                answer = await resp.json(content_type=None)
                raise click.ClickException(f"{url}: {answer.get('error', resp.status)}")
            async for line in resp.content:
                sys.stdout.write(line.decode())
                sys.stdout.flush()
    except aiohttp.ClientConnectionError as exc:
        raise Operational(
            f"no runtime answers at {url} ({exc}); is `chute run` running with its API enabled?"
        ) from None
