"""Event (de)serialisation: the stdlib json module against orjson and msgspec.

Run: python -m bench.bench_events [--repeat 5]. Prints a table of per-call times (min / median /
max over repetitions) and the ratio to stdlib json measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import TYPE_CHECKING

import msgspec
import orjson

if TYPE_CHECKING:
    from collections.abc import Callable

DOC = {
    "t": "log",
    "ts": 1764000000.123456,
    "d": {"message": "Building image layer 7/12: pip install -r requirements.txt", "level": "info"},
    "i": "a1b2c3d4e5f6-1234",
    "s": "Vb8pQm1n3xYzR4tKw9LcDg",
}
RAW = orjson.dumps(DOC)
CASES: dict[str, tuple[Callable[[], object], Callable[[], object]]] = {
    "json": (lambda: json.dumps(DOC, separators=(",", ":")).encode(), lambda: json.loads(RAW)),
    "orjson": (lambda: orjson.dumps(DOC), lambda: orjson.loads(RAW)),
    "msgspec": (lambda: msgspec.json.encode(DOC), lambda: msgspec.json.decode(RAW)),
}


def per_call(fn: Callable[[], object], number: int) -> float:
    start = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - start) / number


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--number", type=int, default=100_000)
    args = parser.parse_args()
    results: dict[str, list[list[float]]] = {name: [[], []] for name in CASES}
    for _ in range(args.repeat):  # interleaved, so drift hits every case alike
        for name, (dump, load) in CASES.items():
            results[name][0].append(per_call(dump, args.number))
            results[name][1].append(per_call(load, args.number))
    base = [statistics.median(results["json"][0]), statistics.median(results["json"][1])]
    print("| library | dumps µs min / median / max | loads µs min / median / max | vs json |")
    print("|---|---|---|---|")
    for name, (dumps, loads) in results.items():
        cells = [
            " / ".join(f"{v * 1e6:.2f}" for v in (min(s), statistics.median(s), max(s)))
            for s in (dumps, loads)
        ]
        speedups = (base[0] / statistics.median(dumps), base[1] / statistics.median(loads))
        ratio = " / ".join(f"{value:.1f}x" for value in speedups)
        print(f"| {name} | {cells[0]} | {cells[1]} | {ratio} |")


if __name__ == "__main__":
    main()
