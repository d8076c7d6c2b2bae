"""The multi-worker pattern: several executors in sequence over one item.

::

    executor = { type = "chain", steps = [
        { type = "command", argv = ["python3", "scripts/faces/detect.py"] },
        { type = "command", argv = ["python3", "scripts/faces/match.py"] },
        { type = "command", argv = ["python3", "scripts/faces/blur.py"] },
    ] }

Each step receives the previous step's result as its item data (for command
steps, the previous ``WORK_RESULT_FILE`` becomes the next ``WORK_ITEM_FILE``);
a step that returns nothing (None) passes its own input on unchanged. The
chain's result is the last step's. The chain fails at the first failing step,
with that step's reason and permanence (exit 65 in step 2 is a permanent
failure of the chain).

Retries resume, they do not restart: each finished step's result is kept
(a 0600 JSON file under ``WORKDIR/chain/<pool>/``) until the chain finishes,
so the next attempt of the same delivery starts at the step that failed and
an expensive first step is not redone because the last one hiccuped. A new
message with the same key is new work and starts from the first step. Set
``resume = false`` to restart from the first step on every attempt (for
steps whose results are only valid together). Checkpoints of items that
never finished (dead-lettered after their last attempt) are removed after
``keep``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, ClassVar

import msgspec
from chute.config import Duration, Strict, dec_hook, describe_validation_error
from chute.context import PluginContext
from chute.errors import ConfigError, ExecutorUnavailable, ItemFailed, PluginNotFound
from chute.executor import Executor, WorkItem
from chute.registry import load_plugin

log = logging.getLogger("chute.executors.chain")


class ChainOptions(Strict):
    steps: list[dict[str, Any]]
    """Executor tables, each with ``type`` and that executor's options, run in order."""
    resume: bool = True
    """A retry starts at the step that failed (True) or at the first step (False)."""
    keep: Duration = Duration(86400.0)
    """How long checkpoints of unfinished items are kept."""


def build_step(index: int, spec: dict[str, Any], ctx: PluginContext) -> tuple[str, Executor]:
    """(label, executor) for ``steps[index]``; ConfigError keys start with ``steps[i].``."""
    key = f"steps[{index}]"
    kind = spec.get("type")
    if not isinstance(kind, str) or not kind:
        raise ConfigError([f"{key}.type: missing: the step's executor (command, python, ...)"])
    try:
        cls = load_plugin("executor", kind)
    except PluginNotFound as exc:
        raise ConfigError([f"{key}.type: {exc}"]) from None
    body = {k: v for k, v in spec.items() if k != "type"}
    try:
        options = msgspec.convert(body, cls.Options, dec_hook=dec_hook)
    except msgspec.ValidationError as err:
        sub, msg = describe_validation_error(err)
        raise ConfigError([f"{key}.{sub}: {msg}"]) from None
    step_ctx = dataclasses.replace(ctx, name=f"{ctx.name}.step{index}")
    try:
        executor: Executor = cls(options, step_ctx)
    except ConfigError as exc:
        raise ConfigError([f"{key}.{p}" for p in exc.problems]) from None
    return f"step {index + 1} ({kind})", executor


class ChainExecutor:
    Options: ClassVar[type[Strict]] = ChainOptions

    def __init__(self, options: ChainOptions, ctx: PluginContext) -> None:
        if not options.steps:
            raise ConfigError(["steps: a chain needs at least one step"])
        self.options = options
        self.steps: list[tuple[str, Executor]] = []
        problems: list[str] = []
        for i, spec in enumerate(options.steps):
            try:
                self.steps.append(build_step(i, spec, ctx))
            except ConfigError as exc:
                problems += exc.problems
        if problems:
            raise ConfigError(problems)
        self.checkpoints = ctx.workdir / "chain" / ctx.name
        if options.resume:
            self._forget_older_than(options.keep)

    # -- checkpoints ------------------------------------------------------

    def _folder(self, item: WorkItem) -> Path | None:
        if not self.options.resume or not item.message.id:
            return None  # no delivery identity: nothing to resume from
        ident = f"{item.name}\0{item.message.id}".encode("utf-8", "surrogatepass")
        return self.checkpoints / hashlib.sha256(ident).hexdigest()[:32]

    @staticmethod
    def _load(folder: Path | None, index: int) -> tuple[bool, Any]:
        if folder is None:
            return False, None
        try:
            return True, msgspec.json.decode((folder / f"step-{index}.json").read_bytes())
        except FileNotFoundError:
            return False, None
        except (OSError, msgspec.DecodeError) as exc:  # a torn file: run the step again
            log.warning(
                "chain checkpoint %s/step-%d unreadable (%s); rerunning", folder, index, exc
            )
            return False, None

    @staticmethod
    def _save(folder: Path | None, index: int, result: Any) -> None:
        if folder is None:
            return
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        final = folder / f"step-{index}.json"
        temp = folder / f".step-{index}.{os.getpid()}.tmp"
        # Item data: owner-only from the first byte, and never half-written.
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(msgspec.json.encode(result))
        os.replace(temp, final)

    def _forget_older_than(self, age: float) -> None:
        if not self.checkpoints.is_dir():
            return
        limit = time.time() - age
        for folder in self.checkpoints.iterdir():
            try:
                if folder.stat().st_mtime < limit:
                    shutil.rmtree(folder, ignore_errors=True)
            except OSError:
                continue

    # -- running ----------------------------------------------------------

    async def run(self, item: WorkItem) -> Any:
        folder = self._folder(item)
        data = item.data
        for index, (label, executor) in enumerate(self.steps):
            done, result = self._load(folder, index)
            if not done:
                step_item = WorkItem(
                    name=item.name,
                    data=data,
                    attempt=item.attempt,
                    message=item.message,
                    pool=item.pool,
                )
                try:
                    result = await executor.run(step_item)
                except ItemFailed as exc:
                    if exc.permanent and folder is not None:
                        shutil.rmtree(folder, ignore_errors=True)
                    raise ItemFailed(
                        f"{label}: {exc.reason}", permanent=exc.permanent, output=exc.output
                    ) from exc
                except ExecutorUnavailable as exc:  # the runtime's fault: no attempt counted
                    raise ExecutorUnavailable(f"{label}: {exc.reason}") from exc
                except Exception as exc:
                    raise ItemFailed(f"{label}: {type(exc).__name__}: {exc}") from exc
                if result is None:
                    result = data  # a step with only side effects passes its input on
                if index < len(self.steps) - 1:
                    try:
                        self._save(folder, index, result)
                    except OSError as exc:  # the disk is full: not the item's fault
                        why = f"{label}: cannot save its checkpoint in {folder}: {exc}"
                        raise ExecutorUnavailable(why) from None
            data = result
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        return data

    async def aclose(self) -> None:
        for label, executor in self.steps:
            try:
                await executor.aclose()
            except Exception:
                log.exception("closing chain %s", label)
