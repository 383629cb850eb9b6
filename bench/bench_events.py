"""Event (de)serialisation: the stdlib json module against orjson and msgspec.

In one process (no server: this is the per-event cost every publish and delivery pays), a
typical ``log`` event is encoded and decoded ``--number`` times per repetition, the three
libraries interleaved; the ratio is to stdlib json measured in the same run.

Run: python -m bench.bench_events [--repeat 5] [--number 100000] [--quick] [--output FILE]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import TYPE_CHECKING

import msgspec
import orjson

from ._harness import Result, common_args

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
LABELS = {"json": "json (stdlib)", "orjson": "orjson", "msgspec": "msgspec"}
DESCRIPTION = """\
`StreamEvent.to_bytes()` / `from_bytes()` run once per event on every publish and every
delivery, so the JSON library is on the hot path. A typical `log` event (five fields, a
70-character message) is encoded and decoded in a loop in one process, the three libraries
interleaved in every repetition; the ratio is to the stdlib `json` module (lower time is
better, so a ratio below 1 is a speed-up)."""


def per_call(fn: Callable[[], object], number: int) -> float:
    start = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - start) / number


def main() -> None:
    parser = argparse.ArgumentParser(description="Event (de)serialisation.")
    common_args(parser)
    parser.set_defaults(repeat=5)
    parser.add_argument("--number", type=int, default=100_000)
    args = parser.parse_args()
    if args.quick:
        args.repeat, args.number = 1, 1_000
    result = Result("events", "Event serialisation", DESCRIPTION)
    times: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in CASES}
    for _ in range(args.repeat):  # interleaved, so drift hits every case alike
        for name, (dump, load) in CASES.items():
            times[name][0].append(per_call(dump, args.number) * 1e6)
            times[name][1].append(per_call(load, args.number) * 1e6)
    for index, title in enumerate(("encode (dumps)", "decode (loads)")):
        table = result.table(title, "µs per call", higher_is_better=False, baseline="json")
        for name, samples in times.items():
            table.add(name, LABELS[name], samples[index])
    result.save(args.output)


if __name__ == "__main__":
    main()
