"""The peers chute is measured against: where they live, how they are installed, their versions.

Each Python peer gets a virtual environment of its own under the cache folder
(``$CHUTE_BENCH_CACHE``, default ``~/.cache/chute-bench``): Celery's Redis
transport needs redis-py >= 6.4 while arq pins redis < 6, and neither may
change the ranges chute itself declares. ``python -m bench.peers`` creates or
updates them; ``python -m bench`` only checks them and stops with one line
naming what is missing.

The command-line peers (``xargs``, GNU ``parallel``, ``inotifywait``) are
system packages: ``apt-get install -y parallel inotify-tools``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

APPS = Path(__file__).resolve().parent / "apps"
"""The peers' task modules and drivers; each runs inside its peer's environment."""


@dataclass(frozen=True)
class Peer:
    name: str
    requirement: str
    """What pip installs (pinned: a figure names the version it came from)."""
    distribution: str
    """The distribution whose version the JSON reports."""


PEERS: dict[str, Peer] = {
    "celery": Peer("celery", "celery[redis]==5.7.0", "celery"),
    "dramatiq": Peer("dramatiq", "dramatiq[redis]==2.2.1", "dramatiq"),
    "arq": Peer("arq", "arq==0.28.0", "arq"),
    "rq": Peer("rq", "rq==3.0.0", "rq"),
}

TOOLS = {"xargs": "findutils", "parallel": "parallel", "inotifywait": "inotify-tools"}
"""Command-line peers: program -> the Debian package that has it."""


class MissingPeer(Exception):
    """A peer the run needs is not installed; the message says how to install it."""


def cache() -> Path:
    return Path(os.environ.get("CHUTE_BENCH_CACHE", Path.home() / ".cache" / "chute-bench"))


def venv(peer: str) -> Path:
    return cache() / "peers" / peer


def python(peer: str) -> Path:
    exe = venv(peer) / "bin" / "python"
    stamp = venv(peer) / "installed.txt"
    if not exe.exists() or not stamp.exists() or stamp.read_text() != PEERS[peer].requirement:
        raise MissingPeer(f"peer {peer} is not installed ({PEERS[peer].requirement}): "
                          f"run `python -m bench.peers`")  # fmt: skip
    return exe


def script(peer: str, name: str) -> Path:
    """A console script of a peer's environment (``celery``, ``dramatiq``, ``arq``, ``rq``)."""
    return python(peer).parent / name


def tool(program: str) -> str:
    found = shutil.which(program)
    if found is None:
        raise MissingPeer(f"{program} is missing: apt-get install -y {TOOLS[program]}")
    return found


def version(peer: str) -> str:
    out = subprocess.run(
        [str(python(peer)), "-c",
         f"import importlib.metadata as m; print(m.version({PEERS[peer].distribution!r}), "
         "m.version('redis'))"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    mine, redis = out.stdout.split()
    return f"{mine} (redis-py {redis})"


def tool_version(program: str) -> str:
    flag = "--help" if program == "inotifywait" else "--version"  # it has no --version
    out = subprocess.run([tool(program), flag], capture_output=True, text=True)
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else "unknown"


def install(names: list[str]) -> None:
    for name in names:
        peer = PEERS[name]
        where = venv(name)
        stamp = where / "installed.txt"
        if stamp.exists() and stamp.read_text() == peer.requirement:
            print(f"{name}: {peer.requirement} already in {where}")
            continue
        print(f"{name}: installing {peer.requirement} into {where}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(where)], check=True)
        subprocess.run([str(where / "bin" / "pip"), "install", "-q", peer.requirement],
                       check=True)  # fmt: skip
        stamp.write_text(peer.requirement)
    for program, package in TOOLS.items():
        if shutil.which(program) is None:
            print(f"{program} is missing: apt-get install -y {package}")
