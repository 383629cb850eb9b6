"""Run every benchmark in turn, then regenerate ``docs/benchmarks.md``.

Run: python -m bench [--only NAME,NAME] [--repeat N] [--quick] [--results DIR] [--docs FILE]

Each benchmark runs as ``python -m bench.bench_<name>`` in its own process (one at a time, so
they never load the machine together) and writes ``<results>/<name>.json``; ``bench.report``
then rebuilds the page from every JSON file in ``<results>``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from ._harness import RESULTS, ROOT

BENCHMARKS = (
    "direct",
    "latency",
    "concurrency",
    "leases",
    "resume",
    "telemetry",
    "events",
    "storage",
    "drain",
    "servers",
    "cluster",
)


def main() -> None:
    parser = argparse.ArgumentParser(description="Run all benchmarks, then the report.")
    parser.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated names")
    parser.add_argument("--repeat", type=int, default=None, help="repetitions for every one")
    parser.add_argument("--quick", action="store_true", help="smoke sizes (for tests)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--docs", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args()
    names = [name for name in args.only.split(",") if name]
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; known: {', '.join(BENCHMARKS)}")
    failed = []
    for name in names:
        command = [sys.executable, "-m", f"bench.bench_{name}"]
        command += ["--output", str(args.results / f"{name}.json")]
        if args.repeat is not None:
            command += ["--repeat", str(args.repeat)]
        if args.quick:
            command.append("--quick")
        print(f"\n=== {' '.join(command[1:])}", flush=True)
        started = time.perf_counter()
        code = subprocess.run(command, cwd=ROOT, check=False).returncode
        print(f"=== {name}: exit {code} after {time.perf_counter() - started:.0f} s", flush=True)
        if code != 0:
            failed.append(name)
    report = [sys.executable, "-m", "bench.report", "--results", str(args.results)]
    subprocess.run([*report, "--docs", str(args.docs)], cwd=ROOT, check=True)
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
