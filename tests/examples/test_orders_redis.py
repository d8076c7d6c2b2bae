"""configs/orders-redis.toml as a user runs it: orders written by redis-cli, then
``chute run --until-idle`` (on a key prefix of the test Redis, and its own stream)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.redis_server import drop_prefix, shared_url, unique_prefix

pytestmark = pytest.mark.redis

REPO = Path(__file__).resolve().parents[2]


def test_orders_from_redis_cli_are_invoiced_once_each(tmp_path: Path) -> None:
    url, prefix = shared_url(), unique_prefix()
    stream = prefix + "shop:orders"
    text = (REPO / "configs" / "orders-redis.toml").read_text()
    text = text.replace('"redis://127.0.0.1:6379/0"', f'"{url}?prefix={prefix}"', 2)
    text = text.replace('url = "redis://127.0.0.1:6379/0"', f'url = "{url}"')
    text = text.replace('stream = "shop:orders"', f'stream = "{stream}"')
    text = text.replace('path = ["."]', f'path = ["{REPO / "configs"}"]')
    config = tmp_path / "orders-redis.toml"
    config.write_text(text)
    try:
        for n in range(5):
            subprocess.run(["redis-cli", "-u", url, "XADD", stream, "*", "order", f"o-{n}",
                            "json", f'{{"total": {10 * (n + 1)}, "items": {n}}}'],
                           check=True, capture_output=True, timeout=10)  # fmt: skip
        done = subprocess.run(
            [sys.executable, "-m", "chute", "run", str(config), "--until-idle"],
            capture_output=True, text=True, timeout=90, cwd=tmp_path,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        invoices = sorted(line for line in done.stdout.splitlines() if line.startswith("invoice"))
        assert invoices == sorted(
            f"invoice: {12.0 * (n + 1):.2f} due ({n} items)" for n in range(5)
        )
    finally:
        drop_prefix(url, prefix)
