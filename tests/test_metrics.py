"""/metrics, /readyz and /healthz of a running pipeline, scraped as Prometheus would."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import anyio
from chute.config import config_from_dict
from chute.engine import Runtime
from prometheus_client.parser import text_string_to_metric_families

FAMILIES = {
    "chute_ready": "gauge",
    "chute_topic_length": "gauge",
    "chute_topic_published": "counter",
    "chute_group_lag": "gauge",
    "chute_group_pending": "gauge",
    "chute_group_oldest_pending_age_seconds": "gauge",
    "chute_group_acked": "counter",
    "chute_pool_concurrency": "gauge",
    "chute_pool_target": "gauge",
    "chute_pool_in_flight": "gauge",
    "chute_pool_arrival_rate": "gauge",
    "chute_pool_service_time_seconds": "gauge",
    "chute_pool_items": "counter",
    "chute_pool_duration_seconds": "histogram",
    "chute_pool_queue_wait_seconds": "histogram",
    "chute_operator_messages": "counter",
    "chute_shard_healthy": "gauge",
    "chute_source_emitted": "gauge",
}


def make_config(tmp_path: Path) -> Any:
    doc = {
        "workdir": str(tmp_path / "work"),
        "api": {"enabled": True, "port": 0},
        "topics": {"jobs": {}, "files": {}},
        "sources": {"inbox": {"type": "watch", "topic": "files", "path": str(tmp_path / "in")}},
        "operators": {"spread": {"type": "shard", "input": "jobs", "shards": 2, "prefix": "s"}},
        "pools": {
            f"work{i}": {
                "topic": f"s-{i}",
                "concurrency": 2,
                "track": False,
                "executor": {"type": "python", "function": "tests.helpers.tasks:flaky"},
                "retry": {"attempts": 2, "backoff": "10ms"},
            }
            for i in (0, 1)
        },
    }
    return config_from_dict(doc, path="test.toml", base_dir=str(tmp_path))


def samples(
    text: str,
) -> tuple[dict[str, str], dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    """(family name -> type, (sample name, labels) -> value)."""
    types, values = {}, {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for s in family.samples:
            values[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return types, values


async def test_metrics_scraped_twice_have_every_family_and_counters_only_grow(
    tmp_path: Path,
) -> None:
    (tmp_path / "in").mkdir()
    for name in ("a.txt", "b.txt"):
        (tmp_path / "in" / name).write_text(name)
    async with Runtime(make_config(tmp_path)) as rt, aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{rt.api_port}"
        for n in range(20):  # flaky: fails each item's first attempt once (fail=1), then done
            await rt.publish("jobs", {"n": f"m{tmp_path.name}{n}", "fail": n % 2}, key=f"k{n}")
        async with http.get(f"{url}/metrics") as resp:
            assert resp.status == 200
            assert resp.content_type == "text/plain"
            first = await resp.text()
        with anyio.fail_after(20):
            await rt.wait_idle()
            await rt.sources["inbox"][0].caught_up()  # type: ignore[attr-defined]
        async with http.get(f"{url}/metrics") as resp:
            second = await resp.text()

    types1, values1 = samples(first)
    types2, values2 = samples(second)
    for name, kind in FAMILIES.items():
        assert types2.get(name) == kind, f"{name} missing or not a {kind}"
    for key, value in values1.items():
        if types1.get(_family(key[0], types1)) in ("counter", "histogram"):
            assert values2[key] >= value, f"{key} went down: {value} -> {values2[key]}"

    def total(outcome: str) -> float:
        return sum(
            v for (name, labels), v in values2.items()
            if name == "chute_pool_items_total" and ("outcome", outcome) in labels
        )  # fmt: skip

    assert total("done") == 20
    assert total("retried") == 10
    count = sum(v for (n, _), v in values2.items() if n == "chute_pool_duration_seconds_count")
    assert count == 30  # 20 items, 10 of them twice
    assert ("chute_shard_healthy", (("operator", "spread"), ("shard", "s-0"))) in values2
    assert values2[("chute_topic_published_total", (("topic", "jobs"),))] == 20
    assert values2[("chute_source_emitted", (("source", "inbox"),))] == 2


def _family(sample: str, types: dict[str, str]) -> str:
    for suffix in ("_total", "_bucket", "_count", "_sum", "_created"):
        if sample.endswith(suffix) and sample[: -len(suffix)] in types:
            return sample[: -len(suffix)]
    return sample


async def test_readyz_is_503_until_started_and_healthz_stays_live(tmp_path: Path) -> None:
    rt = Runtime(make_config(tmp_path))
    assert rt.unready_reasons()  # not started
    async with rt, aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{rt.api_port}"
        async with http.get(f"{url}/readyz") as resp:
            assert resp.status == 200, await resp.text()
        rt.broker.healthy = False  # type: ignore[attr-defined]  # as a lost Redis sets it
        async with http.get(f"{url}/readyz") as resp:
            assert resp.status == 503
            assert "unreachable" in " ".join((await resp.json())["reasons"])
        async with http.get(f"{url}/metrics") as resp:
            assert "chute_ready 0.0" in await resp.text()
        rt.broker.healthy = True  # type: ignore[attr-defined]
        rt.stop()
        async with http.get(f"{url}/readyz") as resp:
            assert resp.status == 503
