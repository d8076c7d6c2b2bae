"""``python -m bench``: chute against Celery, Dramatiq, arq, RQ, xargs -P, GNU parallel,
inotifywait and watchfiles, in one run; one table, and the same as JSON with the machine.

    python -m bench.peers                     # once: the peers' environments
    python -m bench [--quick] [--only a,b,...] [--json PATH] [--no-peers]

Scenarios: (a) no-op jobs through Redis, (b) /bin/true jobs, (c) folder
latency, (d) start-up and idle memory, (e) the figures of bench/*.py.
Exit status: 0 when every scenario ran (a missed floor is a row of the table,
not a failure), 2 on a usage error, 3 on an operational failure such as a
missing peer or a worker that died, printed as one line; 130 or 143 when
stopped by SIGINT or SIGTERM, after stopping every process it started.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

from bench._procs import BenchError
from bench._table import Results, machine, markdown, render
from bench.peers import PEERS, MissingPeer, cache, python, tool, tool_version, version
from bench.scenarios import MODES, existing, folder, footprint, jobs, spawns

SCENARIOS = {"a": jobs, "b": spawns, "c": folder, "d": footprint, "e": existing}
NEEDS = {"a": ["frameworks"], "b": ["frameworks", "xargs", "parallel"], "c": ["inotifywait"],
         "d": ["frameworks"], "e": ["inotifywait"]}  # fmt: skip


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smaller counts: under 3 minutes")
    size.add_argument(
        "--smoke",
        action="store_true",
        help="tiny counts, to check that the bench runs (figures meaningless)",
    )
    parser.add_argument("--only", default="", help="scenarios to run, e.g. a or a,c (a-e)")
    parser.add_argument("--json", default="", help="where to write the JSON "
                        "(default ~/.cache/chute-bench/results/<time>.json)")  # fmt: skip
    parser.add_argument(
        "--no-peers",
        action="store_true",
        help="chute's own figures only; without it a missing peer is an error",
    )
    parser.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    args = parser.parse_args(argv)
    wanted = [s.strip() for s in args.only.split(",") if s.strip()] or list(SCENARIOS)
    bad = [s for s in wanted if s not in SCENARIOS]
    if bad:
        parser.error(f"unknown scenario {bad[0]!r}; choose from {', '.join(SCENARIOS)}")
    args.scenarios = wanted
    return args


def versions(scenarios: list[str], peers: bool) -> dict[str, str]:
    """Every peer the run needs, with its version; MissingPeer names the first one missing."""
    needed = {n for s in scenarios for n in NEEDS[s]}
    out = {}
    if peers and "frameworks" in needed:
        for name in PEERS:
            python(name)
            out[name] = version(name)
    programs = ["inotifywait"] if "inotifywait" in needed else []
    if peers:
        programs += [p for p in ("xargs", "parallel") if p in needed]
    for program in programs:
        tool(program)
        out[program] = tool_version(program)
    if peers and "c" in scenarios:
        from importlib.metadata import version as dist_version

        out["watchfiles"] = dist_version("watchfiles")
    return out


def _stop(signum: int, frame: object) -> None:
    # Unwinds through every `with`: workers, redis-servers and folders go with the bench.
    raise SystemExit(128 + signum)


def main(argv: list[str]) -> int:
    args = parse(argv)
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)  # also when started in the background (SIGINT ignored)
    mode = MODES["quick" if args.quick else "smoke" if args.smoke else "full"]
    peers = not args.no_peers
    began = time.perf_counter()
    try:
        found = versions(args.scenarios, peers)
        about = machine(lambda: found)
        print(
            f"bench ({mode.name}): {about['cpu']}, {about['cores']} cores, kernel "
            f"{about['kernel']}, Python {about['python']}, Redis {about['redis']}, "
            f"load average {about['load_average'][0]}",
            flush=True,
        )
        results = Results()
        for name in args.scenarios:
            t0 = time.perf_counter()
            SCENARIOS[name].run(mode, results, peers)
            took = results.details.setdefault("seconds", {})[name] = time.perf_counter() - t0
            print(f"  ({name}) took {took:.0f} s", flush=True)
    except (BenchError, MissingPeer) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 3
    elapsed = time.perf_counter() - began
    about["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print()
    print(render(results.rows))
    if args.markdown:
        print()
        print(markdown(results.rows))
    missed = [r for r in results.rows if r.met is False]
    print(
        f"\n{len(results.rows)} rows, {len(missed)} floors not met; {elapsed:.0f} s; "
        f"load average {about['load_average_at_end'][0]} at the end"
    )
    out = Path(args.json) if args.json else (
        cache() / "results" / time.strftime("%Y%m%dT%H%M%SZ.json", time.gmtime()))  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "command": "python -m bench " + " ".join(argv),
        "mode": mode.name,
        "seconds": round(elapsed, 1),
        "machine": about,
        "rows": [r.as_json() for r in results.rows],
        "details": results.details,
    }
    out.write_text(json.dumps(doc, indent=1, default=str))
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
