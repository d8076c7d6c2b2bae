"""chain: steps in sequence over one item; fail at the first failing step; retries resume."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from chute.config import dec_hook
from chute.context import PluginContext
from chute.errors import ConfigError, ExecutorUnavailable, ItemFailed
from chute.executor import WorkItem
from chute.message import Message
from chute_plugins.brokers.memory import MemoryBroker
from chute_plugins.executors.chain import ChainExecutor, ChainOptions

from .chain_stubs import CALLS

STAMP = "tests.executors.chain_stubs:Stamp"


@pytest.fixture(autouse=True)
def _fresh_counts() -> Iterator[None]:
    CALLS.clear()
    yield
    CALLS.clear()


def chain(tmp_path: Path, steps: list[dict[str, Any]], **options: Any) -> ChainExecutor:
    ctx = PluginContext(
        name="photos", topic="in", base_dir=tmp_path, workdir=tmp_path / "work",
        node="test", broker=MemoryBroker(),
    )  # fmt: skip
    opts = msgspec.convert({"steps": steps, **options}, ChainOptions, dec_hook=dec_hook)
    return ChainExecutor(opts, ctx)


def item(attempt: int = 1, message_id: str = "1700000000000-0") -> WorkItem:
    message = Message(id=message_id, key="photo-1", data={"path": "p.jpg"}, attempt=attempt)
    return WorkItem(name="photo-1", data={"path": "p.jpg"}, attempt=attempt, message=message,
                    pool="photos")  # fmt: skip


def stamps(*tags: str, **extra: Any) -> list[dict[str, Any]]:
    return [{"type": STAMP, "tag": t, **extra.get(t, {})} for t in tags]


async def test_each_step_gets_the_previous_result(tmp_path: Path) -> None:
    ex = chain(tmp_path, [*stamps("detect"), {"type": "tests.executors.chain_stubs:Nothing"},
                          *stamps("match", "blur")])  # fmt: skip
    result = await ex.run(item())
    assert result == {"path": "p.jpg", "trail": ["detect", "match", "blur"]}
    assert CALLS["nothing"] == 1  # ran, returned nothing: its input passed on
    assert not any((tmp_path / "work").rglob("*.json"))  # finished: no checkpoints left
    await ex.aclose()
    assert CALLS["closed"] == 3


async def test_fails_at_the_first_failing_step_and_stops(tmp_path: Path) -> None:
    ex = chain(tmp_path, stamps("detect", "match", "blur", match={"fail_first": 1}))
    with pytest.raises(ItemFailed) as err:
        await ex.run(item())
    assert err.value.reason == "step 2 (tests.executors.chain_stubs:Stamp): match failed"
    assert not err.value.permanent and err.value.output == "stderr tail"
    assert CALLS["blur"] == 0


async def test_a_retry_resumes_at_the_failed_step(tmp_path: Path) -> None:
    ex = chain(tmp_path, stamps("detect", "match", "blur", blur={"fail_first": 2}))
    for attempt in (1, 2):
        with pytest.raises(ItemFailed):
            await ex.run(item(attempt))
    checkpoints = list((tmp_path / "work" / "chain" / "photos").rglob("step-*.json"))
    assert len(checkpoints) == 2
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in checkpoints)
    result = await ex.run(item(3))
    assert result["trail"] == ["detect", "match", "blur"]
    assert (CALLS["detect"], CALLS["match"], CALLS["blur"]) == (1, 1, 3)


async def test_resume_false_restarts_the_chain(tmp_path: Path) -> None:
    ex = chain(tmp_path, stamps("detect", "blur", blur={"fail_first": 1}), resume=False)
    with pytest.raises(ItemFailed):
        await ex.run(item(1))
    assert (await ex.run(item(2)))["trail"] == ["detect", "blur"]
    assert CALLS["detect"] == 2


async def test_a_new_message_with_the_same_key_starts_over(tmp_path: Path) -> None:
    ex = chain(tmp_path, stamps("detect", "blur", blur={"fail_first": 1}))
    with pytest.raises(ItemFailed):
        await ex.run(item(1, message_id="1-0"))
    await ex.run(item(1, message_id="2-0"))
    assert CALLS["detect"] == 2


async def test_permanent_failure_is_permanent_for_the_chain(tmp_path: Path) -> None:
    ex = chain(tmp_path, stamps("detect", "match", match={"fail_first": 1, "permanent": True}))
    with pytest.raises(ItemFailed) as err:
        await ex.run(item())
    assert err.value.permanent
    assert not any((tmp_path / "work").rglob("*.json"))  # dead: nothing to resume


async def test_an_unexpected_exception_is_a_retryable_failure_naming_the_step(
    tmp_path: Path,
) -> None:
    ex = chain(tmp_path, stamps("detect", detect={"fail_first": 1, "crash": True}))
    with pytest.raises(ItemFailed) as err:
        await ex.run(item())
    assert err.value.reason == (
        "step 1 (tests.executors.chain_stubs:Stamp): RuntimeError: detect fell over"
    )
    assert not err.value.permanent


@pytest.mark.parametrize(
    ("steps", "problems"),
    [
        ([], ["steps: a chain needs at least one step"]),
        ([{"tag": "x"}], ["steps[0].type: missing: the step's executor (command, python, ...)"]),
        (
            [{"type": STAMP, "tag": "a"}, {"type": STAMP, "tgs": "b"}],
            ["steps[1].tgs: unknown key (check the spelling; see the docs for this table)"],
        ),
        ([{"type": "nosuch"}], ["steps[0].type: unknown executor 'nosuch'"]),
    ],
)
def test_bad_steps_are_config_errors_naming_the_step(
    tmp_path: Path, steps: list[dict[str, Any]], problems: list[str]
) -> None:
    with pytest.raises(ConfigError) as err:
        chain(tmp_path, steps)
    assert len(err.value.problems) == len(problems)
    for got, want in zip(err.value.problems, problems, strict=True):
        assert got.startswith(want), got


async def test_pool_retries_resume_the_chain_through_the_engine(tmp_path: Path) -> None:
    """The pool redelivers a failed item with the same id, so its chain resumes."""
    from chute.config import config_from_dict
    from chute.engine import Runtime

    doc = {
        "workdir": str(tmp_path / "work"),
        "sources": {"gen": {"type": "generate", "topic": "photos", "count": 3}},
        "pools": {
            "faces": {
                "topic": "photos",
                "track": False,
                "retry": {"attempts": 3, "backoff": "10ms"},
                "executor": {
                    "type": "chain",
                    "steps": stamps("detect", "blur", blur={"fail_first": 2}),
                },
            }
        },
    }
    rt = Runtime(config_from_dict(doc, base_dir=str(tmp_path)), until_idle=True)
    await rt.run()
    assert rt.pools["faces"].counters.succeeded == 3
    assert (CALLS["detect"], CALLS["blur"]) == (3, 5)  # two blur failures, detect never redone


def _program(path: Path) -> Path:
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


async def test_a_steps_runtime_fault_stays_the_runtimes_not_the_items(tmp_path: Path) -> None:
    """A command step whose program vanished (a deploy) is not the item's failure."""
    tool = _program(tmp_path / "tool")
    ex = chain(tmp_path, [*stamps("detect"), {"type": "command", "argv": [str(tool)]}])
    os.unlink(tool)
    try:
        with pytest.raises(ExecutorUnavailable, match="step 2 \\(command\\): cannot start"):
            await ex.run(item())
    finally:
        await ex.aclose()
