"""How each framework's workers are started and its producer driven, on a given Redis URL.

A *side* is chute or one of its peers. Workers are configured as each
project's documentation recommends for throughput (bench/README.md says how);
the job bodies are the same everywhere (``apps/jobs.py``, ``apps/arq_app.py``
and ``apps/chute_app.py``: one Redis INCR).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from bench._procs import BenchError, Workers
from bench.peers import APPS, python, script

FRAMEWORKS = ["celery", "dramatiq", "arq", "rq"]
CORES = os.cpu_count() or 2


def interpreter(side: str) -> str:
    return sys.executable if side.startswith("chute") else str(python(side))


def chute_cli() -> list[str]:
    exe = shutil.which("chute", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "chute"]


def driver(side: str, url: str, *args: object, timeout: float = 900) -> dict[str, object]:
    app = "chute_app" if side.startswith("chute") else f"{side}_app"
    done = subprocess.run(
        [interpreter(side), str(APPS / "driver.py"), app, *map(str, args)],
        env={**os.environ, "BENCH_REDIS": url}, cwd=APPS, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-2:])
        raise BenchError(f"{side} driver {args[0]} failed: {tail}")
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def chute_config(url: str, kind: str, concurrency: int, workdir: Path) -> Path:
    python_step = {"type": "python", "function": "chute_app:run", "path": [str(APPS)]}
    true = {"type": "command", "argv": ["/bin/true"]}
    executor = {
        "noop": python_step,
        "spawn": {"type": "chain", "resume": False, "steps": [true, python_step]},
        "true": true,
        "count": {**python_step, "function": "chute_app:count"},
    }[kind]
    pool = {"topic": "jobs", "concurrency": concurrency, "track": False, "executor": executor}
    if kind != "true":  # a python body, whose Redis client has no socket timeout (chute_app.py)
        pool["timeout"] = 600  # Dramatiq's default time limit
    doc = {
        "broker": url,
        "workdir": str(workdir),
        "log_level": "warning",
        "topics": {"jobs": {"capacity": 1_000_000}},
        "pools": {"work": pool},
    }
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "bench.yaml"
    path.write_text(json.dumps(doc))  # JSON is YAML
    return path


def describe(side: str, kind: str, concurrency: int) -> str:
    """How the side's workers run, for the table's notes and the JSON."""
    half = max(1, concurrency // 2)
    return {
        "chute": f"1 process, pool of {concurrency}",
        "chute x2": f"2 processes, pools of {concurrency}",
        "celery": f"prefork {concurrency}",
        "dramatiq": f"{CORES} processes x {8 if kind == 'noop' else half} threads",
        "arq": f"{CORES} processes x max_jobs {10 if kind == 'noop' else half}",
        "rq": f"worker-pool of {CORES if kind == 'noop' else concurrency} SimpleWorkers",
    }[side]


def start(side: str, url: str, kind: str, concurrency: int, workdir: Path) -> Workers:
    """Start a side's workers: for ``noop`` jobs at their throughput settings, for ``spawn``
    jobs with ``concurrency`` jobs at once in all."""
    env = {"BENCH_REDIS": url, "PYTHONPATH": str(APPS)}
    commands: list[Sequence[str]]
    if side in ("chute", "chute x2"):
        nodes = 2 if side == "chute x2" else 1
        commands = [
            [*chute_cli(), "run",
             str(chute_config(url, kind, concurrency, workdir / f"node-{i}"))]
            for i in range(nodes)
        ]  # fmt: skip
    elif side == "celery":
        commands = [[str(script("celery", "celery")), "-A", "celery_app", "worker",
                     "--pool", "prefork", "--concurrency", str(concurrency),
                     "--without-gossip", "--without-mingle", "--without-heartbeat",
                     "--loglevel", "WARNING"]]  # fmt: skip
    elif side == "dramatiq":
        threads = 8 if kind == "noop" else max(1, concurrency // CORES)
        commands = [[str(script("dramatiq", "dramatiq")), "dramatiq_app",
                     "--processes", str(CORES), "--threads", str(threads)]]  # fmt: skip
    elif side == "arq":
        if kind != "noop":
            env["BENCH_MAX_JOBS"] = str(max(1, concurrency // CORES))
        commands = [[str(script("arq", "arq")), "arq_app.WorkerSettings"]] * CORES
    elif side == "rq":
        workers = CORES if kind == "noop" else concurrency
        commands = [[str(script("rq", "rq")), "worker-pool", "-n", str(workers),
                     "-w", "rq.worker.SimpleWorker", "-u", url, "-q", "default"]]  # fmt: skip
    else:
        raise BenchError(f"unknown side {side!r}")
    return Workers(side, commands, env, APPS)
