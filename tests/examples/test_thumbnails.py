"""configs/thumbnails.toml as a user runs it: real videos (and one broken file)
renamed into inbox/, then ``chute run --until-idle`` with real ffmpeg."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
GOOD = ["clip one.mp4", "clip-two.mp4", "a  b (3).mp4"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def ffmpeg() -> str:
    found = shutil.which("ffmpeg")
    if found is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("ffmpeg is not installed (CI=true: the thumbnail example must run)")
        pytest.skip("ffmpeg is not installed")
    return found


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_SIGNATURE, f"{path.name} is not a PNG"
    length, kind = struct.unpack(">I4s", head[8:16])
    assert (length, kind) == (13, b"IHDR"), f"{path.name}: first chunk is not IHDR"
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def test_each_video_gets_a_thumbnail_and_the_broken_one_is_rejected(
    tmp_path: Path, ffmpeg: str
) -> None:
    (tmp_path / "scripts").mkdir()
    shutil.copy(CONFIGS / "thumbnails.toml", tmp_path / "thumbnails.toml")
    shutil.copy(CONFIGS / "scripts" / "thumbnail.py", tmp_path / "scripts" / "thumbnail.py")

    staging, inbox = tmp_path / "staging", tmp_path / "inbox"
    staging.mkdir()
    inbox.mkdir()
    for name in GOOD:
        subprocess.run(
            [ffmpeg, "-nostdin", "-loglevel", "error", "-f", "lavfi",
             "-i", "testsrc=size=320x240:rate=10", "-t", "1", "-pix_fmt", "yuv420p",
             str(staging / name)],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
    (staging / "broken.mp4").write_bytes(b"this is not a video\n" * 100)
    for path in staging.iterdir():  # complete files only ever appear in inbox/
        path.rename(inbox / path.name)

    done = subprocess.run(
        [sys.executable, "-m", "chute", "run", str(tmp_path / "thumbnails.toml"),
         "--until-idle"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    # Bad input is permanent (the script's exit 65): dead on the first attempt, not the third.
    assert "is dead (permanent failure): exit 65" in done.stderr, done.stderr

    thumbnails = tmp_path / "thumbnails"
    assert sorted(p.name for p in thumbnails.iterdir()) == sorted(f"{n}.png" for n in GOOD)
    for name in GOOD:
        assert png_size(thumbnails / f"{name}.png") == (160, 120)
    assert not (thumbnails / "broken.mp4.png").exists()

    assert sorted(p.name for p in (tmp_path / "done").iterdir()) == sorted(GOOD)
    assert [p.name for p in (tmp_path / "rejected").iterdir()] == ["broken.mp4"]
    assert list(inbox.iterdir()) == []
