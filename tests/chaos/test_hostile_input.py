"""Hostile headers and ids against a real server: each gets its documented answer, never a 500.

``tests.apps.chaos`` in a uvicorn child process, in memory mode and on Redis. Huge and
malformed ``Last-Event-ID`` values, CR/LF in ids (header and log-line injection attempts),
oversized and odd user ids and stream ids, unknown and foreign streams, path-traversal-looking
ids and a 5 MB job payload. Each answer is checked (status, JSON ``detail`` or the in-band
``reset``, no injected header or event), then: no traceback in the server's log and no forged
log line, no lease held, no stream open, and in Redis nothing but the one stream's history.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pytest
import redis.asyncio

from tests.helpers.chaos import chaos_server, lease_keys, leftovers, settled
from tests.helpers.sse_client import SSEClient

if TYPE_CHECKING:
    from pathlib import Path

    from tests.helpers.redis_server import RedisServer

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(120)]

STREAM_ID = "{stream}"  # replaced by the id of alice's stream


@dataclass(frozen=True)
class Case:
    name: str
    path: str
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    method: str = "GET"
    detail: str = ""  # in the JSON body's "detail"


CASES = [
    Case(
        "a 64 KiB Last-Event-ID",
        f"/streams/{STREAM_ID}",
        200,
        {"x-user": "alice", "last-event-id": "a" * 65536},
    ),
    Case(
        "a malformed Last-Event-ID",
        f"/streams/{STREAM_ID}",
        200,
        {"x-user": "alice", "last-event-id": "zz-!!-9"},
    ),
    Case(
        "CR/LF in last_event_id (query)",
        f"/streams/{STREAM_ID}?last_event_id=abc%0d%0aevent:%20evil%0d%0adata:%20x%0d%0a%0d%0a",
        200,
        {"x-user": "alice"},
    ),
    Case(
        "CR/LF in a stream id",
        "/streams/abc%0d%0aSet-Cookie:%20stolen=1",
        400,
        {"x-user": "alice"},
        detail="stream id must be",
    ),
    Case("NUL in a stream id", "/streams/abc%00", 400, {"x-user": "alice"}, detail="stream id"),
    Case(
        "a 10,000-character stream id",
        "/streams/" + "a" * 10000,
        400,
        {"x-user": "alice"},
        detail="(10000 characters)",
    ),
    Case("a traversal (encoded)", "/streams/..%2f..%2fetc%2fpasswd", 404, {"x-user": "alice"}),
    Case("a traversal (raw)", "/streams/../../etc/passwd", 404, {"x-user": "alice"}),
    Case(
        "an unknown stream",
        "/streams/AAAAAAAAAAAAAAAAAAAAAA",
        404,
        {"x-user": "alice"},
        detail="no stream",
    ),
    Case(
        "another user's stream", f"/streams/{STREAM_ID}", 404, {"x-user": "bob"}, detail="no stream"
    ),
    Case("a 300-character user id", "/direct?user=" + "u" * 300, 400, detail="user_id must be"),
    Case("an empty user id", "/direct?user=", 400, detail="user_id must be"),
    Case(
        "a 300-character caller",
        "/deploy",
        400,
        {"x-user": "u" * 300},
        "POST",
        "user_id must be",
    ),
    Case("no caller", "/deploy", 400, {}, "POST", "user_id must be"),
    Case("a 5 MB job payload", f"/jobs?size={5 * 1024 * 1024}", 413, {"x-user": "alice"}, "POST"),
    Case("braces in a user id", "/direct?user=a%7Db%7Bc&n=1", 200),
]


async def answer(base_url: str, case: Case, stream_id: str) -> tuple[int, dict[str, str], str]:
    """(status, headers, body or the first events) of one request."""
    path = case.path.replace(STREAM_ID, stream_id)
    body = {"steps": 1} if case.path == "/deploy" else None
    async with SSEClient.connect(
        base_url, path, method=case.method, headers=case.headers, json=body, timeout=10
    ) as client:
        if client.status == 200:
            events = [(e.event, e.data) async for e in client.events(5)]
            return client.status, client.headers, json.dumps(events)
        return client.status, client.headers, (await client.read_body(5)).decode()


@pytest.mark.parametrize("mode", ["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def test_hostile_headers_and_ids_get_their_documented_answer(
    mode: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    started = time.monotonic()
    client = None
    url = None
    if mode == "redis":
        redis_server: RedisServer = request.getfixturevalue("redis_server")
        url = redis_server.url
        client = redis.asyncio.from_url(url)
        await client.flushall()
    server = chaos_server(tmp_path, url)
    await asyncio.to_thread(server.start)
    try:
        base = server.base_url
        deploy = {"steps": 3, "delay": 0.01}
        async with SSEClient.connect(
            base, "/deploy", method="POST", json=deploy, headers={"x-user": "alice"}
        ) as stream:
            stream_id = stream.headers["x-stream-id"]
            history = [(e.event, e.data) async for e in stream.events(5)]
        answers = {case.name: await answer(base, case, stream_id) for case in CASES}
        # A user id with a line break is a valid id; its release line must not forge another.
        forged = "a\r\nERROR: forged line"
        path = "/direct?user=a%0d%0aERROR:%20forged%20line&n=1000&every=0.01"
        async with SSEClient.connect(base, path) as dropped:
            assert dropped.status == 200
            await dropped.next_event(5)
            dropped.reset()
        after = await settled(base, ["alice", "bob", "a}b{c", forged], tasks=10**6)
        left = await lease_keys(client) if client is not None else 0
        streams, expiring, stay = await leftovers(client) if client else (0, [], [])
    finally:
        if client is not None:
            await client.aclose()
        await asyncio.to_thread(server.stop)
    log = server.log_text()
    print(f"\nhostile input ({mode}): " + "; ".join(f"{n}: {a[0]}" for n, a in answers.items()))
    for case in CASES:
        status, headers, body = answers[case.name]
        assert status == case.status, (case.name, status, body[:300])
        assert "set-cookie" not in headers, case.name
        if status != 200:
            assert headers["content-type"] == "application/json", case.name
            assert case.detail in json.loads(body)["detail"], (case.name, body[:300])
    for name in ("a 64 KiB Last-Event-ID", "a malformed Last-Event-ID"):
        events = [tuple(e) for e in json.loads(answers[name][2])]
        assert events == [("reset", '{"reason":"unknown"}'), *history], name
    injected = json.loads(answers["CR/LF in last_event_id (query)"][2])
    assert [e[0] for e in injected] == ["reset", "log", "log", "log", "complete"]
    assert "Traceback" not in log, log[-3000:]
    assert not [line for line in log.splitlines() if line.startswith("ERROR: forged")]
    assert "released 1 lease(s) of 'a\\r\\nERROR: forged line'" in log
    assert after["leases"] == 0, after["held"]
    assert after["open_streams"] == 0
    assert left == 0
    assert streams == (2 if mode == "redis" else 0)  # alice's stream: its events and meta
    assert stay == []
    print(
        f"Redis keys left: {streams} of history, others {expiring}; "
        f"{time.monotonic() - started:.1f} s"
    )


async def test_a_failing_direct_generator_ends_with_an_error_event(tmp_path: Path) -> None:
    """The generator raises mid-stream: the client gets ``error {reason: internal_error,
    error_id}`` and a clean end of body, without the exception's text; the log has it, with
    the same error id; the lease comes back."""
    server = chaos_server(tmp_path, None)
    await asyncio.to_thread(server.start)
    try:
        async with SSEClient.connect(server.base_url, "/direct?user=f&n=10&fail=4") as client:
            assert client.status == 200
            events = [e async for e in client.events(5)]  # IncompleteBody on a cut
            wire = json.dumps([(e.event, e.data) for e in events])
        after = await settled(server.base_url, ["f"], tasks=10**6)
    finally:
        await asyncio.to_thread(server.stop)
    log = server.log_text()
    assert [e.event for e in events] == ["token"] * 3 + ["error"]
    error = json.loads(events[-1].data)
    assert error["reason"] == "internal_error"
    assert "secret-api-key" not in wire
    assert f"(error_id {error['error_id']})" in log
    assert "secret-api-key-123" in log  # the operator sees it, in the log
    assert "Exception in ASGI application" not in log
    assert after["leases"] == 0
    assert after["open_streams"] == 0
