"""``chute``: run, check, publish, status, serve-items.

Exit codes: 0 success; 1 a runtime failure; 2 a usage or config error (the
problems are printed one per line, never as a traceback); ``run`` stopped by
a signal exits 128 + its number: 130 SIGINT, 143 SIGTERM (a second signal
stops at once, with the code of the first).
"""

from __future__ import annotations

import json
import logging
import signal
import sys
from typing import Any, NoReturn

import anyio
import click
import msgspec
from anyio.abc import TaskStatus

from .autoscale import describe_scale
from .config import Config, load_config
from .errors import BrokerUnavailable, ChuteError, ConfigError, InvalidMessage
from .graph import describe, scheme_of, validate, warnings_of

EXIT_CONFIG = 2


def _load(path: str) -> Config:
    config = load_config(path)
    validate(config)
    return config


def _load_optional(path: str | None) -> Config | None:
    """The config named by an optional ``--config``; its mistakes end the command."""
    if not path:
        return None
    try:
        return _load(path)
    except ConfigError as exc:
        _fail_config(exc)


def _fail_config(exc: ConfigError) -> NoReturn:
    for problem in exc.problems:
        click.echo(problem, err=True)
    sys.exit(EXIT_CONFIG)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="chute", prog_name="chute")
@click.option("--log-level", default=None, help="debug, info, warning or error.")
@click.pass_context
def main(ctx: click.Context, log_level: str | None) -> None:
    """chute: topics, sources, operators and worker pools in one process."""
    ctx.ensure_object(dict)
    ctx.obj["log_level"] = log_level


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--until-idle", is_flag=True, help="Exit once every topic is drained.")
@click.pass_context
def run(ctx: click.Context, config: str, until_idle: bool) -> None:
    """Run the graph in CONFIG until SIGINT/SIGTERM (or until idle)."""
    try:
        cfg = _load(config)
    except ConfigError as exc:
        _fail_config(exc)
    _setup_logging(ctx.obj["log_level"] or cfg.settings.log_level)
    from .engine import Runtime

    stopped_by: list[int] = []

    async def main_task() -> None:
        runtime = Runtime(cfg, until_idle=until_idle)
        async with anyio.create_task_group() as tg:
            # Listening before the build: a signal while connecting stops at once.
            await tg.start(_stop_on_signals, runtime, tg.cancel_scope, stopped_by)
            await runtime.build()
            await runtime.run()
            tg.cancel_scope.cancel()

    try:
        try:
            anyio.run(main_task)
        except BaseExceptionGroup as group:  # the task group wraps what build() raised
            raise _sole(group) from None
    except KeyboardInterrupt:  # before the signal handlers were installed
        sys.exit(128 + signal.SIGINT)
    except ConfigError as exc:
        _fail_config(exc)
    except ChuteError as exc:
        click.echo(f"chute: {exc}", err=True)
        sys.exit(1)
    if stopped_by:
        sys.exit(128 + stopped_by[0])


def _sole(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one error inside nested groups, or the group itself when there are several."""
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


async def _stop_on_signals(runtime: Any, scope: anyio.CancelScope, stopped_by: list[int],
                           *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:  # fmt: skip
    """First signal: drain for the grace period. Second (or one before running): stop now."""
    log = logging.getLogger("chute")
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for signum in signals:
            stopped_by.append(signum)
            name = signal.Signals(signum).name
            if len(stopped_by) == 1 and runtime.ready.is_set():
                log.info("%s: draining (send again to stop at once)", name)
                runtime.stop()
            else:
                log.warning("%s: stopping now; items in flight stay pending", name)
                runtime.stop_now()
                scope.cancel()
                return


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
def check(config: str) -> None:
    """Validate CONFIG without running it; print the graph."""
    try:
        cfg = _load(config)
    except ConfigError as exc:
        _fail_config(exc)
    for warning in warnings_of(cfg):
        click.echo(warning, err=True)
    click.echo(f"{config}: ok")
    click.echo(describe(cfg))


def _api_url(cfg: Config | None, url: str | None) -> str:
    if url:
        return url.rstrip("/")
    host, port = ("127.0.0.1", 8765) if cfg is None else (cfg.api.host, cfg.api.port)
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"http://{host}:{port}"


@main.command()
@click.argument("topic")
@click.argument("data", required=False)
@click.option("--key", default="", help="Item key (identity and shard key).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="Publish into this config's broker (local file or Redis), or its API.")  # fmt: skip
@click.option("--url", default=None, help="The runtime's API, default http://127.0.0.1:8765.")
@click.option("--token", default=None, envvar="CHUTE_TOKEN", help="API bearer token.")
def publish(topic: str, data: str | None, key: str, config_path: str | None,
            url: str | None, token: str | None) -> None:  # fmt: skip
    """Publish DATA (JSON), or NDJSON lines from stdin, to TOPIC."""
    from .api import parse_messages

    body = data.encode() if data is not None else sys.stdin.buffer.read()
    try:
        messages = parse_messages(body)
    except (InvalidMessage, UnicodeDecodeError) as exc:
        raise click.UsageError(f"cannot read the messages: {exc}") from None
    if key:
        for m in messages:
            m.key = key
    cfg = _load_optional(config_path)
    ids: list[str] | None = None
    if cfg is not None and scheme_of(cfg.settings.broker) != "memory" and not url:
        ids = anyio.run(_publish_direct, cfg, topic, messages)
    if ids is None:
        token = token or (cfg.api.token if cfg else None)
        ids = anyio.run(_publish_http, _api_url(cfg, url), token, topic, messages)
    for message_id in ids:
        click.echo(message_id)


async def _publish_direct(cfg: Config, topic: str, messages: list[Any]) -> list[str] | None:
    """Into the config's broker itself; None when a running runtime holds its local file
    (then its API takes the messages)."""
    from .engine import Runtime

    runtime = Runtime(cfg)
    if topic not in runtime.known_topics():
        raise click.ClickException(f"unknown topic {topic!r} (not in {cfg.path})")
    broker = runtime.broker
    try:
        await broker.start()
    except BrokerUnavailable:
        if scheme_of(cfg.settings.broker) == "local":
            return None
        raise
    try:
        ids: list[str] = await broker.publish(topic, messages)
        return ids
    finally:
        await broker.aclose()


async def _publish_http(url: str, token: str | None, topic: str, messages: list[Any]) -> list[str]:
    body = b"\n".join(
        msgspec.json.encode({"data": m.data, "key": m.key, "headers": m.headers}) for m in messages
    )
    answer = await _api_post(url, f"/v1/topics/{topic}/messages", token, body, expect=201)
    return list(answer["ids"])


async def _api_post(url: str, path: str, token: str | None, body: bytes,
                    expect: int = 200) -> dict[str, Any]:  # fmt: skip
    """POST to the running runtime's API; its errors become one line for the user."""
    import aiohttp

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        async with (
            aiohttp.ClientSession(headers=headers) as session,
            session.post(f"{url}{path}", data=body) as resp,
        ):
            answer: dict[str, Any] = await resp.json(content_type=None)
            if resp.status != expect:
                raise click.ClickException(f"{url}: {answer.get('error', resp.status)}")
            return answer
    except aiohttp.ClientConnectionError as exc:
        raise click.ClickException(
            f"no runtime answers at {url} ({exc}); is `chute run` running with its API enabled?"
        ) from None


@main.command()
@click.argument("operator")
@click.argument("shard")
@click.option("--up", is_flag=True, help="Put the shard back (default: mark it down).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="Find the runtime's API from this config.")  # fmt: skip
@click.option("--url", default=None, help="The runtime's API, default http://127.0.0.1:8765.")
@click.option("--token", default=None, envvar="CHUTE_TOKEN", help="API bearer token.")
def shard(operator: str, shard: str, up: bool, config_path: str | None, url: str | None,
          token: str | None) -> None:  # fmt: skip
    """Mark SHARD (an index or its topic) of a running shard OPERATOR down, or --up again."""
    cfg = _load_optional(config_path)
    token = token or (cfg.api.token if cfg else None)
    path = f"/v1/operators/{operator}/shards/{shard}"
    body = msgspec.json.encode({"down": not up})
    answer = anyio.run(_api_post, _api_url(cfg, url), path, token, body)
    click.echo(f"{operator}: shard {answer['shard']} is {'down' if answer['down'] else 'up'}")


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--url", default=None, help="The runtime's API, for live pool figures.")
@click.option("--token", default=None, envvar="CHUTE_TOKEN")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status(config: str, url: str | None, token: str | None, as_json: bool) -> None:
    """Item counts and recent failures from the state store; live figures if running."""
    try:
        cfg = _load(config)
    except ConfigError as exc:
        _fail_config(exc)
    report = anyio.run(
        _status, cfg, _api_url(cfg, url) if (url or cfg.api.enabled) else None, token
    )
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
        return
    for pool, counts in sorted(report["items"].items()):
        summary = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        click.echo(f"pool {pool}: {summary}")
    if report["failures"]:
        click.echo("recent failures:")
        for f in report["failures"]:
            click.echo(
                f"  [{f['status']}] {f['pool']} {f['key']!r} x{f['attempts']}: {f['last_error']}"
            )
    live = report.get("live")
    if live:
        for pool in live["pools"]:
            click.echo(
                f"live pool {pool['name']}: concurrency {pool['concurrency']}, in flight "
                f"{pool['in_flight']}, ok {pool['succeeded']}, failed {pool['failed']}, dead {pool['dead']}"
            )
            if pool.get("scale"):
                click.echo(f"  scaling: {describe_scale(pool['scale'])}")
        for topic in live["topics"]:
            if not topic["groups"]:
                click.echo(
                    f"live topic {topic['topic']}: no consumer group; holds {topic['length']} "
                    f"of {topic['capacity']}, dropped {topic.get('dropped', 0)}"
                )
            for g in topic["groups"]:
                click.echo(
                    f"live topic {topic['topic']} group {g['name']}: lag {g['lag']}, "
                    f"pending {g['pending']}, oldest {g['oldest_pending_age']:.1f}s"
                )
    elif url or cfg.api.enabled:
        click.echo("(the runtime is not running, or its API is not reachable)")


async def _status(cfg: Config, url: str | None, token: str | None) -> dict[str, Any]:
    from .registry import load_plugin

    report: dict[str, Any] = {"items": {}, "failures": [], "live": None}
    workdir = cfg.workdir()
    store = load_plugin("store", scheme_of(cfg.settings.state))(cfg.settings.state, workdir)
    await store.open()
    try:
        report["items"] = await store.counts()
        report["failures"] = msgspec.to_builtins(await store.failures(10))
    finally:
        await store.aclose()
    if url:
        import aiohttp

        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            async with (
                aiohttp.ClientSession(headers=headers) as session,
                session.get(f"{url}/v1/status", timeout=aiohttp.ClientTimeout(2)) as r,
            ):
                if r.status == 200:
                    report["live"] = await r.json()
        except (aiohttp.ClientError, TimeoutError):
            pass
    return report


@main.command("serve-items")
@click.argument("directory", type=click.Path(file_okay=False, exists=True))
@click.option("--glob", default="*", show_default=True, help="Which file names are items.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; anything but loopback needs --token.")  # fmt: skip
@click.option("--port", default=8080, show_default=True, type=int)
@click.option("--token", default="", envvar="CHUTE_TOKEN",
              help="Require 'Authorization: Bearer TOKEN'.")  # fmt: skip
@click.pass_context
def serve_items(ctx: click.Context, directory: str, glob: str, host: str, port: int,
                token: str) -> None:  # fmt: skip
    """Serve DIRECTORY's files as the book's item API (GET /v1/items, /v1/items/NAME)."""
    from .items_server import serve_items as serve

    _setup_logging(ctx.obj["log_level"] or "info")
    try:
        anyio.run(serve, directory, glob, host, port, token)
    except ConfigError as exc:
        _fail_config(exc)
    except OSError as exc:
        click.echo(f"chute serve-items: cannot listen on {host}:{port}: {exc.strerror}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


@main.command()
def schema() -> None:
    """Print a JSON Schema of the config (for editors that check TOML and YAML)."""
    from .reference import config_schema

    click.echo(json.dumps(config_schema(), indent=2))


@main.command()
def reference() -> None:
    """Print the config reference (every table and key, with defaults) as Markdown."""
    from .reference import reference_markdown

    click.echo(reference_markdown(), nl=False)


if __name__ == "__main__":  # pragma: no cover
    main()
