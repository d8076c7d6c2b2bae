"""``serve-items``: the book's source container for a folder, over real HTTP on loopback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from chute.errors import ConfigError
from chute.items_server import ItemsServer, is_loopback
from chute_plugins.sources.http import HttpSource

from tests.servers import free_port

from .conftest import build, make_context, running


def make_folder(root: Path) -> Path:
    folder = root / "shared"
    folder.mkdir()
    for name in ["a.mp4", "b c.mp4", "semi;colon.mp4", "$(x).mp4", "notes.txt", ".hidden.mp4",
                 "half.mp4.part"]:  # fmt: skip
        (folder / name).write_bytes(name.encode())
    (folder / "dir.mp4").mkdir()
    (folder / "dir.mp4" / "inner.mp4").write_bytes(b"inner")
    (root / "secret.mp4").write_bytes(b"outside")
    os.symlink(root / "secret.mp4", folder / "link.mp4")
    os.symlink("loop.mp4", folder / "loop.mp4")
    (folder.joinpath(os.fsdecode(b"caf\xe9.mp4"))).write_bytes(b"latin-1")
    return folder


async def get(url: str, token: str = "") -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as response:
        text = await response.text()
    try:
        return response.status, json.loads(text)
    except ValueError:
        return response.status, text  # the router's own 404 page


async def test_lists_regular_files_and_serves_their_metadata(tmp_path: Path) -> None:
    folder = make_folder(tmp_path)
    async with ItemsServer(folder, glob="*.mp4", port=0) as server:
        status, listing = await get(f"{server.url}/v1/items")
        assert status == 200
        assert listing == {
            "kind": "ItemList",
            "apiVersion": "v1",
            "items": ["$(x).mp4", "a.mp4", "b c.mp4", "semi;colon.mp4"],
        }
        status, body = await get(f"{server.url}/v1/items/b%20c.mp4")
    st = os.stat(folder / "b c.mp4")
    assert status == 200
    assert body == {
        "kind": "Item",
        "apiVersion": "v1",
        "data": {
            "path": str(folder.resolve() / "b c.mp4"),
            "name": "b c.mp4",
            "size": st.st_size,
            "mtime": st.st_mtime,
        },
    }


@pytest.mark.parametrize(
    "name",
    [
        "..%2Fsecret.mp4",
        "%2E%2E%2Fsecret.mp4",
        "%2Fetc%2Fpasswd",
        "..",
        "link.mp4",
        "loop.mp4",
        "dir.mp4",
        "dir.mp4%2Finner.mp4",
        ".hidden.mp4",
        "half.mp4.part",
        "notes.txt",
        "missing.mp4",
        "a.mp4%00.txt",
    ],
)
async def test_nothing_outside_the_listing_can_be_reached(tmp_path: Path, name: str) -> None:
    folder = make_folder(tmp_path)
    async with ItemsServer(folder, glob="*.mp4", port=0) as server:
        status, body = await get(f"{server.url}/v1/items/{name}")
    assert status == 404
    assert "secret" not in str(body)


async def test_a_token_is_required_when_set(tmp_path: Path) -> None:
    folder = make_folder(tmp_path)
    async with ItemsServer(folder, port=0, token="s3cret") as server:
        assert (await get(f"{server.url}/v1/items"))[0] == 401
        assert (await get(f"{server.url}/v1/items", token="wrong"))[0] == 401
        assert (await get(f"{server.url}/v1/items/a.mp4", token="wrong"))[0] == 401
        assert (await get(f"{server.url}/v1/items", token="s3cret"))[0] == 200


def test_refuses_a_non_loopback_address_without_a_token(tmp_path: Path) -> None:
    for host in ["0.0.0.0", "::", "192.0.2.10", "example.org"]:
        with pytest.raises(ConfigError, match="without a token"):
            ItemsServer(tmp_path, host=host)
        ItemsServer(tmp_path, host=host, token="t")  # allowed with a token (not started)
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    with pytest.raises(ConfigError, match="not a folder"):
        ItemsServer(tmp_path / "missing")


async def test_http_source_reads_a_served_folder(tmp_path: Path) -> None:
    folder = make_folder(tmp_path)
    async with ItemsServer(folder, glob="*.mp4", port=0) as server:
        src: HttpSource = build(
            HttpSource, {"url": server.url, "interval": "50ms"}, make_context(tmp_path)
        )
        async with running(src) as got:
            await got.wait_for(lambda: len(got.messages) == 4)
    by_key = {m.key: m.data for m in got.messages}
    assert sorted(by_key) == ["$(x).mp4", "a.mp4", "b c.mp4", "semi;colon.mp4"]
    assert by_key["semi;colon.mp4"]["size"] == len(b"semi;colon.mp4")


def test_chute_serve_items_command(tmp_path: Path) -> None:
    folder = make_folder(tmp_path)
    port = free_port()
    cmd = [sys.executable, "-m", "chute", "serve-items", str(folder), "--glob", "*.mp4"]
    with subprocess.Popen(
        [*cmd, "--port", str(port), "--token", "t0k"], stderr=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stderr is not None
            for log_line in proc.stderr:  # the server says where it listens once it does
                if "serving items" in log_line:
                    break
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/v1/items", headers={"Authorization": "Bearer t0k"}
            )
            with urllib.request.urlopen(request, timeout=5) as response:
                listing = json.load(response)
            assert listing["items"] == ["$(x).mp4", "a.mp4", "b c.mp4", "semi;colon.mp4"]
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=10)
    assert proc.returncode == 130
    refused = subprocess.run(
        [*cmd, "--host", "0.0.0.0"], capture_output=True, text=True, timeout=30
    )
    assert refused.returncode == 2
    assert "without a token" in refused.stderr
