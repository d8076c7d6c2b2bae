"""``chute``: run, check, publish, status, serve-items.

Exit codes: 0 success; 1 a runtime failure; 2 a usage or config error (the
problems are printed one per line, never as a traceback); 3 an operational
failure (port in use, broker or store unreachable: one line ``chute: ...``);
``run`` stopped by a signal exits 128 + its number: 130 SIGINT, 143 SIGTERM
(a second signal stops at once, with the code of the first).
"""

from __future__ import annotations

import gc
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any, NoReturn

import anyio
import click
import msgspec
from anyio.abc import TaskStatus

from .config import Config, load_config
from .errors import BrokerUnavailable, ChuteError, ConfigError, InvalidMessage, Unavailable
from .graph import describe, scheme_of, validate, warnings_of
from .logs import FORMATS, LEVELS, choice_problem, setup_logging, show_progress

EXIT_CONFIG = 2
EXIT_OPERATIONAL = 3


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


class Operational(click.ClickException):
    """Something outside is not there (a port, a service): one line, exit 3."""

    exit_code = EXIT_OPERATIONAL

    def show(self, file: Any = None) -> None:
        click.echo(f"chute: {self.message}", err=True)


def _chute_error(exc: BaseException) -> ChuteError | None:
    """The ChuteError an exception is, or the first one inside an exception group."""
    if isinstance(exc, ChuteError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            if (found := _chute_error(inner)) is not None:
                return found
    return None


def _fail(exc: BaseException) -> NoReturn:
    """Config errors exit 2, operational ones 3, other chute errors 1: one line each."""
    error = _chute_error(exc)
    if error is None:
        raise exc
    if isinstance(error, ConfigError):
        _fail_config(error)
    click.echo(f"chute: {error}", err=True)
    sys.exit(EXIT_OPERATIONAL if isinstance(error, Unavailable) else 1)


def _check_choice(choices: tuple[str, ...], what: str) -> Any:
    def check(_: click.Context, __: click.Parameter, value: str | None) -> str | None:
        if value is not None and (problem := choice_problem(what, value, choices)) is not None:
            raise click.BadParameter(problem)
        return value.lower() if value else None

    return check


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="chute", prog_name="chute")
@click.option("--log-level", default=None, callback=_check_choice(LEVELS, "log level"),
              help="debug, info, warning, error or critical (default: the config's).")  # fmt: skip
@click.option("--log-format", default=None, callback=_check_choice(FORMATS, "log format"),
              help="text or json (default: the config's).")  # fmt: skip
@click.pass_context
def main(ctx: click.Context, log_level: str | None, log_format: str | None) -> None:
    """chute: topics, sources, operators and worker pools in one process."""
    ctx.ensure_object(dict)
    ctx.obj["log_level"] = log_level
    ctx.obj["log_format"] = log_format


def _setup_logging(ctx: click.Context, cfg: Config | None = None) -> None:
    level = ctx.obj["log_level"] or (cfg.settings.log_level if cfg else "info")
    fmt = ctx.obj["log_format"] or (cfg.settings.log_format if cfg else "text")
    setup_logging(level, fmt)


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
    _setup_logging(ctx, cfg)
    from .engine import Runtime

    stopped_by: list[int] = []

    async def main_task() -> None:
        runtime = Runtime(cfg, until_idle=until_idle)
        async with anyio.create_task_group() as tg:
            # Listening before the build: a signal while connecting stops at once.
            await tg.start(_stop_on_signals, runtime, tg.cancel_scope, stopped_by)
            await runtime.build()
            # The imports and the build live as long as the process: out of the
            # collector's sight, a full collection (10 to 16 ms on the demo
            # config, a pause for every item) walks only what came after.
            gc.freeze()
            if until_idle and sys.stderr.isatty():
                tg.start_soon(show_progress, runtime, sys.stderr)
            await runtime.run()
            tg.cancel_scope.cancel()

    try:
        anyio.run(main_task)
    except KeyboardInterrupt:  # before the signal handlers were installed
        sys.exit(128 + signal.SIGINT)
    except (ChuteError, BaseExceptionGroup) as exc:
        _fail(exc)
    if stopped_by:
        sys.exit(128 + stopped_by[0])


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
    """Validate CONFIG as `chute run` would, without running it; print the graph.

    Every problem is printed, one per line, in one pass; warnings too.
    """
    from .graph import build_problems, problems_of

    try:
        cfg = load_config(config)
    except ConfigError as exc:
        _fail_config(exc)
    problems = problems_of(cfg)
    built, warnings = anyio.run(build_problems, cfg)
    for warning in warnings_of(cfg) + warnings:
        click.echo(f"warning: {warning}", err=True)
    if problems or built:
        _fail_config(ConfigError(problems + built))
    click.echo(f"{config}: ok")
    click.echo(describe(cfg))


def _workdir(cfg: Config) -> Path:
    return cfg.workdir()


def _api_token(cfg: Config | None, token: str | None) -> str | None:
    """--token, else the config's token, else the one the runtime wrote in its working folder."""
    from .api_guard import read_token

    if token:
        return token
    if cfg is not None:
        return cfg.api.token or read_token(_workdir(cfg))
    # No config: the runtime started from here, if only one did.
    found = [p.parent for p in Path(".chute").glob("*/api.token")]
    return read_token(found[0]) if len(found) == 1 else read_token(Path(".chute"))


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
        try:
            ids = anyio.run(_publish_direct, cfg, topic, messages)
        except (ChuteError, BaseExceptionGroup) as exc:
            _fail(exc)
    if ids is None:
        token = _api_token(cfg, token)
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
    answer = await _api_post(
        url, f"/v1/topics/{topic}/messages", token, body, expect=201, ndjson=True
    )
    return list(answer["ids"])


async def _api_post(url: str, path: str, token: str | None, body: bytes,
                    expect: int = 200, ndjson: bool = False) -> dict[str, Any]:  # fmt: skip
    """POST to the running runtime's API; its errors become one line for the user."""
    import aiohttp

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    headers["Content-Type"] = "application/x-ndjson" if ndjson else "application/json"
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
        raise Operational(
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
    token = _api_token(cfg, token)
    path = f"/v1/operators/{operator}/shards/{shard}"
    body = msgspec.json.encode({"down": not up})
    answer = anyio.run(_api_post, _api_url(cfg, url), path, token, body)
    click.echo(f"{operator}: shard {answer['shard']} is {'down' if answer['down'] else 'up'}")


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

    _setup_logging(ctx)
    try:
        anyio.run(serve, directory, glob, host, port, token)
    except ConfigError as exc:
        _fail_config(exc)
    except OSError as exc:
        why = os.strerror(exc.errno) if exc.errno else str(exc)
        click.echo(f"chute: serve-items cannot listen on {host}:{port}: {why}", err=True)
        sys.exit(EXIT_OPERATIONAL)
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


from .cli_groups import groups  # noqa: E402  (it uses the helpers above)
from .cli_ops import dead, status, tail  # noqa: E402  (they use the helpers above)

main.add_command(groups)
main.add_command(status)
main.add_command(dead)
main.add_command(tail)

if __name__ == "__main__":  # pragma: no cover
    main()
