"""The chapter 11 examples, run as a user runs them: ``chute run CONFIG --until-idle``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from chute.config import load_config
from chute.engine import Runtime
from chute.operators import ShardRing

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
FACES = CONFIGS / "scripts" / "faces"


def chute_run(config: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "chute", "run", str(CONFIGS / config), "--until-idle"],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    return done


def test_signup_copies_to_both_queues_and_splits_notifications_by_channel() -> None:
    done = chute_run("signup.toml")
    lines = done.stdout.splitlines()
    welcome = {line.split(" -> ")[1] for line in lines if line.startswith("welcome email")}
    emails = {line.split(" -> ")[1] for line in lines if line.startswith("notification email")}
    sms = {line.split(" -> ")[1] for line in lines if line.startswith("notification sms")}
    assert welcome == {f"user-{n}@example.com" for n in range(12)}  # every sign-up, once
    assert len([ln for ln in lines if ln.startswith("welcome email")]) == 12
    assert emails == {f"user-{n}@example.com" for n in range(12) if n % 3 and n != 7}
    assert sms == {f"+1-555-01{n:02d}" for n in range(12) if n % 3 == 0}
    # user 7 wants a fax: no route, dead-lettered and said so; the rest went through.
    assert "matched no route (first: key 'signup-7')" in done.stderr


async def test_signup_counts_what_each_operator_did() -> None:
    rt = Runtime(load_config(CONFIGS / "signup.toml"), until_idle=True)
    await rt.run()
    fanout, channels = rt.operators["fanout"].stats(), rt.operators["channels"].stats()
    assert (fanout.received, fanout.outputs) == (12, {"notifications": 12, "welcome": 12})
    assert channels.outputs == {"notify-email": 7, "notify-sms": 4, "channels.dead": 1}
    assert (channels.unmatched, channels.dead_lettered, channels.dropped) == (1, 1, 0)
    dead = await rt.broker.stats("channels.dead")
    assert dead.published == 1


@pytest.mark.slow
def test_photos_shard_moves_away_from_a_failing_shard_and_comes_back() -> None:
    done = chute_run("photos-sharded.toml")
    shard_of = {
        int(m[1]): int(m[2])
        for m in re.finditer(r"^photo-(\d+) processed on shard (\d)$", done.stdout, re.M)
    }
    assert sorted(shard_of) == list(range(400))  # nothing lost
    ring = ShardRing(3)
    first = {n: ring.first(f"photo-{n}".encode()) for n in shard_of}
    # Shards 0 and 2 stayed healthy: every one of their keys stayed home.
    assert all(shard_of[n] == first[n] for n in shard_of if first[n] != 1)
    ones = sorted(n for n in shard_of if first[n] == 1)
    moved = [n for n in ones if shard_of[n] != 1]
    assert moved, "shard 1 failed but none of its photos moved"
    assert {shard_of[n] for n in moved} == {0, 2}  # spread over both healthy shards
    returned = [n for n in ones if n > max(moved) and shard_of[n] == 1]
    assert returned, "shard 1 recovered but its photos did not come back"
    assert "shard photos-1 unhealthy (failing" in done.stderr
    assert "shard photos-1 healthy again" in done.stderr


def test_merge_serves_the_quiet_source_without_waiting_for_the_backlog() -> None:
    done = chute_run("merge.toml")
    order = re.findall(r"^(web|mobile)-(\d+) processed$", done.stdout, re.M)
    web = [int(n) for origin, n in order if origin == "web"]
    mobile = [int(n) for origin, n in order if origin == "mobile"]
    assert web == list(range(2000)) and mobile == list(range(20))  # all, in order per source
    last_mobile = max(i for i, (origin, _) in enumerate(order) if origin == "mobile")
    assert last_mobile < 300, f"mobile waited behind {last_mobile} web uploads"


def _step(script: str, item: object, tmp_path: Path) -> tuple[int, object]:
    item_file, result_file = tmp_path / "item.json", tmp_path / "result.json"
    item_file.write_text(json.dumps(item))
    result_file.unlink(missing_ok=True)
    env = {**os.environ, "WORK_ITEM_FILE": str(item_file), "WORK_RESULT_FILE": str(result_file)}
    done = subprocess.run(
        [sys.executable, str(FACES / script)], env=env, capture_output=True, timeout=30
    )
    result = json.loads(result_file.read_text()) if result_file.exists() else None
    return done.returncode, result


def test_face_scripts_follow_the_executor_contract(tmp_path: Path) -> None:
    sys.path.insert(0, str(CONFIGS))
    try:
        from faces_tasks import take_photo  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(CONFIGS))
    photo: object = take_photo({"n": 0})  # ada (consents) and a stranger
    for script in ("detect.py", "match.py", "blur.py"):
        code, photo = _step(script, photo, tmp_path)
        assert code == 0
    assert isinstance(photo, dict)
    assert (photo["blurred"], photo["kept"]) == (["unknown"], ["ada"])
    stranger = [row[4:7] for row in photo["pixels"][4:7]]
    assert stranger == [[5, 5, 5]] * 3  # replaced by its mean brightness (44 / 9)
    assert photo["pixels"][1][1] == 1  # ada's face untouched
    code, _ = _step("detect.py", {"name": "x", "pixels": [[0]], "regions": [
        {"box": [0, 0, 5, 5], "kind": "face"}]}, tmp_path)  # fmt: skip
    assert code == 65  # a broken photo is a permanent failure: straight to the dead letters


def test_faces_chain_end_to_end() -> None:
    done = chute_run("faces.toml")
    results = sorted(line for line in done.stdout.splitlines() if line.startswith("photo-"))
    assert results == [
        "photo-0.json: blurred unknown; kept ada",
        "photo-1.json: blurred bo; kept cy",
        "photo-2.json: blurred nobody; kept cy, ada",
        "photo-3.json: blurred bo; kept ada",
    ]
