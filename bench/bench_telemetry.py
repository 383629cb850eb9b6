"""Telemetry cost: the direct-streaming benchmark with OpenTelemetry spans off and on.

Three uvicorn processes side by side, the routes of `bench.direct_apps`: raw Starlette
`StreamingResponse` (for scale), ours with the OpenTelemetry API's no-op (what an application
gets until it configures an SDK), and ours with the SDK recording every span into an in-memory
exporter and every metric into an in-memory reader. Same client, scenarios and interleaving as
`bench.bench_direct`; the ratio is to ours without the SDK.

Run: python -m bench.bench_telemetry [--repeat 3] [--quick] [--output FILE]
"""

from __future__ import annotations

import json
import urllib.request

from ._harness import Result, Uvicorn
from .bench_direct import measure, parse

DESCRIPTION = """\
What tracing costs on the direct-streaming path: benchmark 1's route served three ways, side by
side, same client and scenarios — raw Starlette `StreamingResponse` for scale; streaming_mw with
the OpenTelemetry API's no-op (what an application gets until it configures an SDK); and
streaming_mw with its own container wired to the SDK, `SimpleSpanProcessor` into an
`InMemorySpanExporter` plus an `InMemoryMetricReader`, so every stream's span and every metric
is really recorded (`bench/direct_apps.py`, `ours_traced`). Spans are per stream, never per
event; the ratio is to streaming_mw without the SDK."""


def main() -> None:
    args = parse("Telemetry cost on the direct-streaming path.")
    result = Result("telemetry", "Telemetry cost", DESCRIPTION)
    recorded: list[int] = []

    def count_spans(servers: dict[str, Uvicorn]) -> None:
        with urllib.request.urlopen(servers["ours_traced"].base_url + "/spans") as answer:  # noqa: S310
            recorded.append(int(json.load(answer)["spans"]))

    cases = ("raw", "ours", "ours_traced")
    for table in measure(result, cases, args, baseline="ours", after=count_spans):
        traced = table.row("ours_traced")["median"]
        plain = table.row("ours")["median"]
        result.notes.append(
            f"{table.title}: spans on cost {(plain / traced - 1) * 100:+.1f}% time per event "
            f"({plain:,.0f} → {traced:,.0f} events/s, medians)."
        )
    result.notes.append(f"The SDK recorded {recorded[0]:,} spans in the traced server's run.")
    if not recorded[0]:
        raise RuntimeError("the traced server recorded no spans")
    result.save(args.output)


if __name__ == "__main__":
    main()
