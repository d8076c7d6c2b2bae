"""configs/edge-thumbnails.toml as a user runs it: clips announced over MQTT
(real Mosquitto, mosquitto_pub), thumbnails made by real ffmpeg, and each
thumbnail's path announced back over MQTT (read with mosquitto_sub)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.examples.test_thumbnails import CONFIGS, ffmpeg, png_size  # noqa: F401 (fixture)
from tests.mqtt_server import MosquittoServer
from tests.servers import require_program

CLIPS = ["cam1-0001", "cam1-0002", "cam2-0001"]


def _example(tmp_path: Path, port: int) -> Path:
    (tmp_path / "scripts").mkdir()
    shutil.copy(CONFIGS / "scripts" / "thumbnail.py", tmp_path / "scripts" / "thumbnail.py")
    text = (CONFIGS / "edge-thumbnails.toml").read_text()
    assert text.count("port = 1883") == 2
    config = tmp_path / "edge-thumbnails.toml"
    config.write_text(text.replace("port = 1883", f"port = {port}"))
    return config


def _mosquitto_sub(server: MosquittoServer, *args: str) -> subprocess.CompletedProcess[str]:
    sub = require_program("mosquitto_sub", "mosquitto-clients")
    return subprocess.run(
        [sub, "-p", str(server.port), "-q", "1", "-i", "viewer", "-c", "-t", "thumbnails/#", *args],
        capture_output=True, text=True, timeout=90, check=True,
    )  # fmt: skip


def test_clips_in_over_mqtt_thumbnail_paths_out_over_mqtt(
    tmp_path: Path,
    ffmpeg: str,  # noqa: F811 (the fixture imported above)
    mosquitto: MosquittoServer,
) -> None:
    config = _example(tmp_path, mosquitto.port)
    videos = tmp_path / "videos"
    videos.mkdir()
    for clip in CLIPS:
        subprocess.run(
            [ffmpeg, "-nostdin", "-loglevel", "error", "-f", "lavfi",
             "-i", "testsrc=size=320x240:rate=10", "-t", "1", "-pix_fmt", "yuv420p",
             str(videos / f"{clip}.mp4")],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
    (videos / "broken.mp4").write_bytes(b"not a video\n" * 100)
    _mosquitto_sub(mosquitto, "-E")  # the viewer's session keeps what comes from now on

    log = tmp_path / "chute.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "chute", "run", str(config)],
            cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while "subscribed to" not in log.read_text():
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)  # another process's log: nothing to wait on
            announcements = [
                json.dumps({"clip": clip, "path": str(videos / f"{clip}.mp4")}) for clip in CLIPS
            ]
            announcements.append(json.dumps({"clip": "bad", "path": str(videos / "broken.mp4")}))
            mosquitto.pub("cameras/cam1/clips", *announcements)
            got = _mosquitto_sub(mosquitto, "-v", "-C", str(len(CLIPS)), "-W", "60").stdout
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)

    announced = dict(line.split(" ", 1) for line in got.splitlines())
    assert sorted(announced) == sorted(f"thumbnails/{clip}" for clip in CLIPS)
    for clip in CLIPS:
        result = json.loads(announced[f"thumbnails/{clip}"])
        assert result["video"] == str(videos / f"{clip}.mp4")
        assert result["thumbnail"] == str(tmp_path / "thumbnails" / f"{clip}.png")
        assert png_size(Path(result["thumbnail"])) == (160, 120)
    assert not (tmp_path / "thumbnails" / "bad.png").exists()
    assert "item 'bad' is dead (permanent failure): exit 65" in log.read_text()
