"""Stream leases: acquire + release pairs per second, and the limit holding under contention.

Two parts, both against a real ``redis-server`` the benchmark starts:

1. **Throughput.** A client process (not the driver) runs acquire + release pairs for a fixed
   time, with 1 pair in flight and with 50 concurrent coroutines (one user each), through
   `RedisLeaseLimiter` and, for scale, `MemoryLeaseLimiter`. The baseline, measured in the same
   process and run, is the floor a pair cannot beat: two ``PING`` round trips per "pair" on the
   same `redis.asyncio` client at the same concurrency. A reference row replaces the first
   ``PING`` with ``EVALSHA`` of ``return 1`` (the shape of a pair: a Lua script to acquire, a
   plain command to release).
2. **Contention.** 4 client processes x 50 concurrent acquirers hammer ONE user with limit 10
   for a few seconds. Each acquirer loops: acquire, ``INCR`` a shared Redis counter (the largest
   value it returns is the most leases ever held at once), hold 0-5 ms, ``DECR``, release; a
   `StreamLimitExceeded` is a rejection, retried after a 0-2 ms sleep. The counter goes up after
   acquire and down before release, so it never over-counts. The target: never more than 10.

Run: python -m bench.bench_leases [--repeat 3] [--seconds 3] [--contention-seconds 8]
[--quick] [--output bench/results/leases.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import redis
import redis.asyncio as aioredis
import uvloop

from streaming_mw.config import StreamLeaseConfig
from streaming_mw.errors import StreamLimitExceeded
from streaming_mw.leases import MemoryLeaseLimiter, RedisLeaseLimiter

from ._harness import Result, client_process, common_args, redis_server, run_client

if TYPE_CHECKING:
    import subprocess
    from collections.abc import Awaitable, Callable

MODULE = "bench.bench_leases"
CASES = ("ping", "script", "redis", "memory")
BASELINE = "ping"
LABELS = {
    "ping": "2 x PING (baseline: two round trips)",
    "script": "EVALSHA 'return 1' + PING (reference)",
    "redis": "RedisLeaseLimiter acquire + release",
    "memory": "MemoryLeaseLimiter acquire + release",
}
CONCURRENCY = (1, 50)
ROUNDS = 6
PROCESSES = 4
ACQUIRERS = 50
LIMIT = 10
HOLD_SECONDS = 0.005
RETRY_SECONDS = 0.002
COUNTER = "bench:leases:held"
CONTENDED_USER = "contended-user"
LEASE_TTL = 120.0
"""Far longer than any hold, so no lease expires under its holder (which would free a slot
legitimately and let the counter pass the limit)."""


def new_loop() -> asyncio.AbstractEventLoop:
    """uvloop, the loop uvicorn runs the library on, for every client case alike."""
    return uvloop.new_event_loop()


# client: throughput (runs in its own process) -------------------------------------------------


async def timed(ops: list[Callable[[], Awaitable[None]]], seconds: float) -> tuple[int, float]:
    """Run each op in its own coroutine, back to back, for ``seconds``; (pairs, elapsed)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds

    async def worker(op: Callable[[], Awaitable[None]]) -> int:
        done = 0
        while loop.time() < deadline:
            await op()
            done += 1
        return done

    start = time.perf_counter()
    counts = await asyncio.gather(*(worker(op) for op in ops))
    return sum(counts), time.perf_counter() - start


def pair_ops(
    case: str, client: aioredis.Redis, concurrency: int
) -> list[Callable[[], Awaitable[None]]]:
    """One pair operation per concurrent worker (each worker its own user)."""
    config = StreamLeaseConfig(limit=5, ttl_seconds=LEASE_TTL, key_namespace="bench_leases")
    ops: list[Callable[[], Awaitable[None]]] = []
    if case == "ping":

        async def ping_pair() -> None:
            await client.ping()
            await client.ping()

        return [ping_pair] * concurrency
    if case == "script":
        script = client.register_script("return 1")

        async def script_pair() -> None:
            await script()
            await client.ping()

        return [script_pair] * concurrency
    limiter = RedisLeaseLimiter(client, config) if case == "redis" else MemoryLeaseLimiter(config)
    for worker in range(concurrency):
        user = f"user-{worker}"

        async def lease_pair(user: str = user) -> None:
            lease = await limiter.acquire(user)
            await limiter.release(lease)

        ops.append(lease_pair)
    return ops


async def throughput_client(url: str, seconds: float, warmup: float) -> dict[str, float]:
    """Pairs/s of every case at every concurrency, each on its own client.

    The ``seconds`` of each case are split into `ROUNDS` slices run round-robin over the cases,
    so load from elsewhere on the machine hits every case alike.
    """
    keys = [f"{case}@{concurrency}" for concurrency in CONCURRENCY for case in CASES]
    clients = {key: aioredis.Redis.from_url(url) for key in keys}
    try:
        ops = {
            key: pair_ops(key.partition("@")[0], clients[key], int(key.partition("@")[2]))
            for key in keys
        }
        for key in keys:
            await timed(ops[key], warmup)  # connections opened, scripts loaded
        pairs = dict.fromkeys(keys, 0)
        elapsed = dict.fromkeys(keys, 0.0)
        for _ in range(ROUNDS):
            for key in keys:
                done, took = await timed(ops[key], seconds / ROUNDS)
                pairs[key] += done
                elapsed[key] += took
    finally:
        for client in clients.values():
            await client.aclose()
    return {key: pairs[key] / elapsed[key] for key in keys}


# client: contention (runs in its own process, one of several) ---------------------------------


@dataclass
class Tally:
    acquisitions: int = 0
    rejections: int = 0
    max_held: int = 0
    seconds: float = 0.0


async def contention_client(url: str, user: str, acquirers: int, seconds: float) -> Tally:
    """Wait for ``go`` on stdin, then run ``acquirers`` acquire/hold/release loops on ``user``."""
    client = aioredis.Redis.from_url(url, max_connections=acquirers + 4)
    config = StreamLeaseConfig(limit=LIMIT, ttl_seconds=LEASE_TTL, key_namespace="bench_leases")
    limiter = RedisLeaseLimiter(client, config)
    tally = Tally()
    loop = asyncio.get_running_loop()
    try:
        await asyncio.gather(*(client.ping() for _ in range(acquirers)))  # open the pool
        print("ready", flush=True)
        await loop.run_in_executor(None, sys.stdin.readline)
        deadline = loop.time() + seconds

        async def acquirer() -> None:
            while loop.time() < deadline:
                try:
                    lease = await limiter.acquire(user)
                except StreamLimitExceeded:
                    tally.rejections += 1
                    await asyncio.sleep(random.uniform(0, RETRY_SECONDS))
                    continue
                held = int(await client.incr(COUNTER))
                tally.max_held = max(tally.max_held, held)
                await asyncio.sleep(random.uniform(0, HOLD_SECONDS))
                await client.decr(COUNTER)
                await limiter.release(lease)
                tally.acquisitions += 1

        start = time.perf_counter()
        await asyncio.gather(*(acquirer() for _ in range(acquirers)))
        tally.seconds = time.perf_counter() - start
    finally:
        await client.aclose()
    return tally


def client_main(argv: list[str]) -> None:
    kind, url, *rest = argv
    with asyncio.Runner(loop_factory=new_loop) as runner:
        if kind == "throughput":
            seconds, warmup = float(rest[0]), float(rest[1])
            print(json.dumps(runner.run(throughput_client(url, seconds, warmup))))
        elif kind == "contention":
            user, acquirers, seconds = rest[0], int(rest[1]), float(rest[2])
            tally = runner.run(contention_client(url, user, acquirers, seconds))
            print(json.dumps(asdict(tally)), flush=True)
        else:
            raise SystemExit(f"unknown client kind {kind!r}")


# driver ---------------------------------------------------------------------------------------


def contention_run(url: str, seconds: float) -> tuple[Tally, int, int]:
    """One run of PROCESSES contending processes; (their summed tally, counter, leases left)."""
    processes: list[subprocess.Popen[str]] = []
    try:
        for _ in range(PROCESSES):
            args = ("contention", url, CONTENDED_USER, ACQUIRERS, seconds)
            processes.append(client_process(MODULE, *args))
        for process in processes:  # every process connected before any starts
            assert process.stdout is not None
            if process.stdout.readline().strip() != "ready":
                raise RuntimeError(f"contention client exited with {process.wait()}")
        for process in processes:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        total = Tally()
        for process in processes:
            assert process.stdout is not None
            line = process.stdout.readline()
            if not line:
                raise RuntimeError(f"contention client exited with {process.wait()}")
            tally = Tally(**json.loads(line))
            total.acquisitions += tally.acquisitions
            total.rejections += tally.rejections
            total.max_held = max(total.max_held, tally.max_held)
            total.seconds = max(total.seconds, tally.seconds)
            process.wait(timeout=30)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    check = redis.Redis.from_url(url)
    try:
        counter = int(check.get(COUNTER) or 0)
        namespace = StreamLeaseConfig(key_namespace="bench_leases").key_namespace
        left = int(check.zcard(f"{namespace}:{{{CONTENDED_USER}}}"))
        check.delete(COUNTER)
    finally:
        check.close()
    return total, counter, left


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    common_args(parser)
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per case")
    parser.add_argument("--contention-seconds", type=float, default=8.0, help="seconds per run")
    parser.add_argument("--client", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        client_main(args.client)
        return
    repeat, seconds, warmup, contend = args.repeat, args.seconds, 0.5, args.contention_seconds
    if args.quick:
        repeat, seconds, warmup, contend = 1, 0.3, 0.1, 1.0

    result = Result(
        "leases",
        "Stream leases: acquire + release throughput and the limit under contention",
        DESCRIPTION.format(
            seconds=seconds,
            repeat=repeat,
            processes=PROCESSES,
            acquirers=ACQUIRERS,
            rounds=ROUNDS,
            limit=LIMIT,
            contend=contend,
        ),
    )
    rates: dict[str, list[float]] = {}
    runs: list[tuple[Tally, int, int]] = []
    with redis_server() as url:
        for _ in range(repeat):
            sample = run_client(MODULE, "throughput", url, seconds, warmup, timeout=120)
            for key, value in sample.items():
                rates.setdefault(key, []).append(float(value))
            runs.append(contention_run(url, contend))

    for concurrency in CONCURRENCY:
        in_flight = "1 in flight (sequential)" if concurrency == 1 else f"{concurrency} in flight"
        table = result.table(
            f"Acquire + release pairs per second from one process, {in_flight}",
            "pairs/s",
            baseline=BASELINE,
        )
        for case in CASES:
            table.add(case, LABELS[case], rates[f"{case}@{concurrency}"])

    title = f"Contention: {PROCESSES} processes x {ACQUIRERS} acquirers on one user, limit {LIMIT}"
    table = result.table(title, "per second")
    table.add(
        "acquired", "acquisitions (held 0-5 ms)", [t.acquisitions / t.seconds for t, _, _ in runs]
    )
    table.add(
        "rejected",
        "rejections (StreamLimitExceeded)",
        [t.rejections / t.seconds for t, _, _ in runs],
    )
    held = result.table(
        "Most leases held at once (shared INCR counter)", "leases", higher_is_better=False
    )
    held.add("max_held", f"max held (limit {LIMIT})", [float(t.max_held) for t, _, _ in runs])

    max_held = max(t.max_held for t, _, _ in runs)
    acquired = sum(t.acquisitions for t, _, _ in runs)
    rejected = sum(t.rejections for t, _, _ in runs)
    leftovers = [(counter, left) for _, counter, left in runs if counter or left]
    result.target(
        f"{PROCESSES} processes x {ACQUIRERS} acquirers, one user: never more than the limit",
        f"max held <= {LIMIT}, acquisitions > 0",
        f"max held {max_held} over {acquired:,} acquisitions, {rejected:,} rejections, "
        f"{len(runs)} run(s)",
        max_held <= LIMIT and acquired > 0,
    )
    result.notes.append(
        "After every contention run the shared counter was back at 0 and the user's lease set "
        "was empty (every lease released)."
        if not leftovers
        else f"After contention runs, (counter, leases left) were {leftovers}: not all released."
    )
    result.save(args.output)


DESCRIPTION = """\
**Throughput.** A client process separate from the driver runs acquire + release pairs against \
a real `redis-server` for {seconds:g} s per case and repetition, with 1 pair in flight and with \
50 concurrent coroutines on one `redis.asyncio` client (hiredis, uvloop), each coroutine its own \
user (so nothing is rejected). `RedisLeaseLimiter` does one Lua `EVALSHA` \
(purge expired, count, add, set expiry) and one `ZREM` per pair; `MemoryLeaseLimiter` is shown \
for scale. The baseline, in the same process and run, is what a pair cannot beat: two `PING` \
round trips on the same client at the same concurrency, so the ratio says how close a pair gets \
to two bare round trips; the `EVALSHA 'return 1'` + `PING` row isolates the cost of calling a \
script. One client process per repetition ({repeat} repetitions) holds one client per case, \
warms each up for 0.5 s, then runs the cases round-robin in {rounds} slices each, so load from \
elsewhere on the machine hits every case alike; min / median / max over repetitions.

**Contention.** {processes} client processes x {acquirers} concurrent acquirers share ONE user \
with limit {limit} for {contend:g} s per run. Each acquirer loops: acquire, `INCR` a shared \
Redis counter, hold a random 0-5 ms, `DECR`, release; `StreamLimitExceeded` counts as a \
rejection and retries after a random 0-2 ms. The counter rises after acquire and falls before \
release, so it never counts more than the leases really held: its largest value above {limit} \
would prove an over-grant. Lease TTL is 120 s, so no lease expires under its holder. After each \
run the counter must be back at 0 and the user's lease set empty. The acquisition rate is not \
a throughput figure: 200 acquirers retrying every 0-2 ms keep every core busy (the point is to \
race acquisitions against releases at the limit), which stretches each hold well past 5 ms.
"""


if __name__ == "__main__":
    main()
