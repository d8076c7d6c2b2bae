"""``[api] items = "TOPIC"``: the runtime's API serves a topic's messages as the book's items."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import anyio
import pytest
from aiohttp.test_utils import TestClient, TestServer
from chute import served_items
from chute.api import build_app
from chute.config import config_from_dict
from chute.engine import Runtime
from chute.errors import ConfigError

DOUBLE = {"type": "python", "function": "tests.helpers.tasks:double"}


def config(tmp_path: Path, name: str, **doc: Any) -> Any:
    doc.setdefault("workdir", str(tmp_path / name))
    return config_from_dict(doc, path=f"{name}.toml", base_dir=str(tmp_path))


async def get(url: str, token: str = "") -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as response:
        return response.status, await response.json()


async def test_one_runtimes_results_are_another_runtimes_items(tmp_path: Path) -> None:
    """Node A doubles jobs into "results", which its API serves; node B's http source
    takes them from there and doubles them again."""
    token = "a-secret-token"
    first = config(
        tmp_path, "a",
        api={"enabled": True, "port": 0, "token": token, "items": "results"},
        topics={"jobs": {}, "results": {}},
        pools={"double": {"topic": "jobs", "executor": DOUBLE, "output": "results"}},
    )  # fmt: skip
    async with Runtime(first) as a:
        for n in range(5):
            await a.publish("jobs", {"n": n}, key=f"job {n}/5")
        await a.wait_idle()
        second = config(
            tmp_path, "b",
            sources={"a": {"type": "http", "topic": "more", "interval": "50ms", "token": token,
                           "url": f"http://127.0.0.1:{a.api_port}"}},
            topics={"more": {}, "final": {}},
            pools={"again": {"topic": "more", "executor": DOUBLE, "output": "final"}},
        )  # fmt: skip
        async with Runtime(second) as b:
            pool = b.pools["again"]
            with anyio.fail_after(10):
                while pool.counters.succeeded < 5:
                    await pool.changed.wait()
            final = await b.broker.browse("final", limit=100)  # type: ignore[attr-defined]
    assert sorted((m.key, m.data["n"]) for m in final) == [(f"job {n}/5", n * 4) for n in range(5)]


async def test_the_listing_names_each_message_by_key_and_serves_its_newest_data(
    tmp_path: Path,
) -> None:
    cfg = config(tmp_path, "a", api={"enabled": True, "port": 0, "items": "out"},
                 topics={"out": {}})  # fmt: skip
    async with Runtime(cfg) as rt:
        base = f"http://127.0.0.1:{rt.api_port}/v1/items"
        no_key = await rt.publish("out", {"v": 0})
        await rt.publish("out", {"v": 1}, key="café/1 ?")
        await rt.publish("out", {"v": 2}, key="b")
        await rt.publish("out", {"v": 3}, key="café/1 ?")  # the same item, newer data
        status, listing = await get(base)
        assert status == 200
        assert listing == {"kind": "ItemList", "apiVersion": "v1",
                           "items": [no_key, "café/1 ?", "b"]}  # fmt: skip
        status, item = await get(f"{base}/{quote('café/1 ?', safe='')}")
        assert (status, item) == (200, {"kind": "Item", "apiVersion": "v1", "data": {"v": 3}})
        assert (await get(f"{base}/{no_key}"))[1]["data"] == {"v": 0}
        status, missing = await get(f"{base}/nothing-here")
        assert status == 404 and "holds no item 'nothing-here'" in missing["error"]


async def test_a_runtime_that_serves_no_items_says_how_to_serve_them(tmp_path: Path) -> None:
    cfg = config(tmp_path, "a", api={"enabled": True, "port": 0}, topics={"out": {}})
    async with Runtime(cfg) as rt:
        status, body = await get(f"http://127.0.0.1:{rt.api_port}/v1/items")
    assert status == 404 and 'set items = "TOPIC" in [api]' in body["error"]


async def test_items_need_the_token_when_the_config_sets_one(tmp_path: Path) -> None:
    cfg = config(tmp_path, "a", api={"enabled": True, "port": 0, "token": "t0k3n",
                                     "items": "out"}, topics={"out": {}})  # fmt: skip
    async with Runtime(cfg) as rt:
        await rt.publish("out", {"v": 1}, key="k")
        url = f"http://127.0.0.1:{rt.api_port}/v1/items"
        assert (await get(url))[0] == 401
        assert (await get(f"{url}/k"))[0] == 401
        assert await get(url, "t0k3n") == (200, {"kind": "ItemList", "apiVersion": "v1",
                                                 "items": ["k"]})  # fmt: skip


def test_serving_the_items_of_a_topic_nothing_publishes_is_a_config_error(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigError) as caught:
        Runtime(config(tmp_path, "a", api={"enabled": True, "items": "reslts"},
                       topics={"results": {}}))  # fmt: skip
    assert str(caught.value).count("\n") == 0
    assert "a.toml" in str(caught.value) and "[api]" in str(caught.value)
    assert "items" in str(caught.value) and "did you mean 'results'" in str(caught.value)


def test_items_with_the_api_off_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"a.toml: \[api\] items: serves nothing while the API is off"
    ):
        Runtime(config(tmp_path, "a", api={"items": "out"}, topics={"out": {}}))


async def test_a_topic_holding_more_than_a_listing_offers_its_newest_messages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(served_items, "LISTED", 3)
    cfg = config(tmp_path, "a", api={"enabled": True, "port": 0, "items": "out"},
                 topics={"out": {}})  # fmt: skip
    async with Runtime(cfg) as rt:
        for n in range(5):
            await rt.publish("out", {"n": n}, key=f"r{n}")
        status, listing = await get(f"http://127.0.0.1:{rt.api_port}/v1/items")
    assert (status, listing["items"]) == (200, ["r2", "r3", "r4"])


class ListsNothing:
    """A third party's broker without ``browse``: it loads, and serves no items."""

    healthy = True


async def test_a_broker_that_cannot_browse_gets_a_501_naming_it(tmp_path: Path) -> None:
    rt = Runtime(config(tmp_path, "a", api={"enabled": True, "items": "out"}, topics={"out": {}}))
    rt.broker = ListsNothing()  # type: ignore[assignment]
    async with TestClient(TestServer(build_app(rt, token="t"))) as client:
        response = await client.get("/v1/items")
        assert response.status == 501
        assert "the local broker cannot list a topic's messages" in (await response.json())["error"]
