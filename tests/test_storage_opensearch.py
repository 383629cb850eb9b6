"""`OpenSearchEventStorage`.

Two parts:

1. The `EventStorage` behaviour contract, parametrised over ``memory`` (always runs) and
   ``opensearch`` (runs only when ``OPENSEARCH_URL`` points at a live server; none can be
   installed on the machines this suite usually runs on, so there it is skipped, not faked).
2. Tests at the HTTP transport boundary, not against a real OpenSearch: the real
   `AsyncOpenSearch` client, transport and connection classes run, and only the aiohttp session
   underneath is replaced by a recorder (`tests.helpers.opensearch_transport`) that answers canned
   JSON. They pin down the requests sent (paths, bodies, auth headers) and how responses and
   failures are handled — not how a real server would answer them.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import os
import re
import sys
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from opensearchpy import AsyncHttpConnection, AsyncOpenSearch, AWSV4SignerAsyncAuth

from streaming_mw.errors import BackendUnavailableError, ConfigurationError
from streaming_mw.events import StreamEvent
from streaming_mw.storage import opensearch as opensearch_module
from streaming_mw.storage.base import EventStorage
from streaming_mw.storage.memory import MemoryEventStorage
from streaming_mw.storage.opensearch import OpenSearchEventStorage
from tests.helpers.opensearch_transport import (
    HOST,
    PORT,
    OpenSearchRecorder,
    RecordingAIOHttpConnection,
    RecordingAsyncHttpConnection,
    sigv4_signature,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

OPENSEARCH_URL = os.environ.get("OPENSEARCH_URL")
needs_opensearch = pytest.mark.skipif(
    not OPENSEARCH_URL,
    reason="OPENSEARCH_URL not set: no OpenSearch server here; the contract runs against "
    "memory always and against OpenSearch when one is available",
)

DAY1 = datetime(2026, 11, 24, tzinfo=UTC).timestamp()  # 2026-11-24T00:00:00Z
DAY2 = DAY1 + 86_400


def ev(seq: int | None, ts: float, stream: str = "s1", type_: str = "progress") -> StreamEvent:
    """An event of ``stream`` with id ``ep-<seq>`` (none if ``seq`` is None) at ``ts``."""
    event_id = None if seq is None else f"ep-{seq}"
    return StreamEvent(type_, {"n": seq, "stream": stream}, event_id, stream, ts)


# --------------------------------------------------------------------------------------------
# 1. The behaviour contract: memory always, OpenSearch when OPENSEARCH_URL is set.
# --------------------------------------------------------------------------------------------


async def _drop_indices(client: AsyncOpenSearch, prefix: str) -> None:
    indices = await client.indices.get(index=f"{prefix}-*")
    if indices:
        await client.indices.delete(index=",".join(indices))
    await client.indices.delete_index_template(name=prefix, params={"ignore": 404})


@pytest.fixture(params=["memory", pytest.param("opensearch", marks=needs_opensearch)])
async def storage(request: pytest.FixtureRequest) -> AsyncIterator[EventStorage]:
    """An empty storage of each kind; OpenSearch gets a unique index prefix, dropped after."""
    if request.param == "memory":
        memory = MemoryEventStorage()
        yield memory
        await memory.aclose()
        return
    assert OPENSEARCH_URL is not None
    verify = os.environ.get("OPENSEARCH_VERIFY_CERTS", "1") != "0"
    client = AsyncOpenSearch(hosts=[OPENSEARCH_URL], verify_certs=verify, ssl_show_warn=False)
    prefix = f"test_stream_events_{uuid.uuid4().hex[:12]}"
    backend = OpenSearchEventStorage(client, index_prefix=prefix, refresh=True)
    try:
        yield backend
    finally:
        try:
            await _drop_indices(client, prefix)
        finally:
            await backend.aclose()


async def test_get_events_in_publication_order_across_out_of_order_batches(
    storage: EventStorage,
) -> None:
    events = [ev(seq, DAY1 + seq) for seq in range(1, 6)]
    other = [ev(seq, DAY1 + seq, stream="s2") for seq in (1, 2)]
    await storage.append(events[2:] + other[:1])
    await storage.append([events[1], other[1], events[0]])

    assert await storage.get_events("s1") == events
    assert await storage.get_events("s2") == other
    assert await storage.get_events("nope") == []


async def test_seq_decides_order_numerically_then_events_without_id_last(
    storage: EventStorage,
) -> None:
    # seq 10 after seq 9 (numbers, not strings); seq beats timestamp; id-less events go last,
    # by time.
    e9, e10, e2 = ev(9, DAY1 + 1), ev(10, DAY1 + 0.5), ev(2, DAY1 + 9)
    loose_late, loose_early = ev(None, DAY1 + 3), ev(None, DAY1 + 2)
    await storage.append([loose_late, e10, e9, loose_early, e2])
    assert await storage.get_events("s1") == [e2, e9, e10, loose_early, loose_late]


async def test_data_and_exact_timestamps_round_trip(storage: EventStorage) -> None:
    events = [
        StreamEvent("log", {"message": "héllo ✓", "level": "info", "nested": {"a": [1, None]}}),
        StreamEvent("progress", [1, "two", {"three": 3.5}]),
        StreamEvent("note", "just a string"),
        StreamEvent("complete", None),
    ]
    events = [
        StreamEvent(e.type, e.data, f"ep-{i}", "s1", DAY1 + 0.123456789 * i)
        for i, e in enumerate(events, start=1)
    ]
    await storage.append(events)
    assert await storage.get_events("s1") == events


async def test_events_of_two_days_are_all_found(storage: EventStorage) -> None:
    events = [ev(1, DAY2 - 0.5), ev(2, DAY2 + 0.25)]
    await storage.append(events)
    assert await storage.get_events("s1") == events
    assert await storage.query(stream_id="s1") == events
    assert await storage.count() == 2


async def test_query_time_range_is_start_inclusive_end_exclusive(storage: EventStorage) -> None:
    events = [ev(seq, DAY1 + seq) for seq in range(1, 6)]
    await storage.append(events[::-1])
    assert await storage.query(start=DAY1 + 2, end=DAY1 + 4) == events[1:3]
    assert await storage.query(start=DAY1 + 4) == events[3:]
    assert await storage.query(end=DAY1 + 2) == events[:1]
    assert await storage.query() == events
    assert await storage.count(start=DAY1 + 2, end=DAY1 + 4) == 2


async def test_query_by_types_and_stream(storage: EventStorage) -> None:
    logs = [ev(1, DAY1 + 1, type_="log"), ev(2, DAY1 + 2, stream="s2", type_="log")]
    progress = [ev(3, DAY1 + 3), ev(4, DAY1 + 4, stream="s2")]
    done = [ev(5, DAY1 + 5, type_="complete")]
    await storage.append(progress + done + logs)

    assert await storage.query(types=["log"]) == logs
    assert await storage.query(types=["log", "complete"]) == [*logs, *done]
    assert await storage.query(stream_id="s2") == [logs[1], progress[1]]
    assert await storage.query(types=["log"], stream_id="s1") == logs[:1]
    assert await storage.query(types=[]) == [*logs, *progress, *done]  # empty: no filter
    assert await storage.query(types=["missing"]) == []
    assert await storage.count(types=["log"]) == 2
    assert await storage.count(stream_id="s2", types=["progress"]) == 1


async def test_query_limit_keeps_the_oldest_and_count_ignores_it(storage: EventStorage) -> None:
    events = [ev(seq, DAY1 + seq) for seq in range(1, 8)]
    await storage.append(events)
    assert await storage.query(limit=3) == events[:3]
    assert await storage.query(start=DAY1 + 4, limit=2) == events[3:5]
    assert await storage.query(limit=0) == []
    assert await storage.count() == 7
    assert await storage.count(start=DAY1 + 4) == 4


async def test_empty_batch_and_empty_store(storage: EventStorage) -> None:
    await storage.append([])
    assert await storage.get_events("s1") == []
    assert await storage.query() == []
    assert await storage.count() == 0


# --------------------------------------------------------------------------------------------
# 2. Tested at the HTTP transport boundary, not against a real OpenSearch.
# --------------------------------------------------------------------------------------------


@pytest.fixture
def recorder() -> OpenSearchRecorder:
    return OpenSearchRecorder()


@pytest.fixture
async def fake_storage(recorder: OpenSearchRecorder) -> AsyncIterator[OpenSearchEventStorage]:
    """An `OpenSearchEventStorage` on a real `AsyncOpenSearch` whose HTTP goes to ``recorder``;
    search pages of 2 hits."""
    backend = OpenSearchEventStorage(recorder.client(), page_size=2)
    try:
        yield backend
    finally:
        await backend.aclose()


def hit(event: StreamEvent, sort: list[Any]) -> dict[str, Any]:
    """A search hit as OpenSearch returns it for a document written by the storage."""
    source = {
        "stream_id": event.stream_id,
        "event_id": event.id,
        "type": event.type,
        "timestamp": int(event.timestamp * 1000),
        "ts": event.timestamp,
        "data": event.data,
    }
    return {"_index": "stream_events-2026.11.24", "_id": "x", "_source": source, "sort": sort}


def test_satisfies_the_protocol(recorder: OpenSearchRecorder) -> None:
    """Tested at the HTTP transport boundary, not against a real OpenSearch: the class is an
    `EventStorage`."""
    backend: EventStorage = OpenSearchEventStorage(recorder.client())
    assert isinstance(backend, EventStorage)


async def test_index_template_is_put_once_before_the_first_write(
    fake_storage: OpenSearchEventStorage, recorder: OpenSearchRecorder
) -> None:
    """Tested at the HTTP transport boundary, not against a real OpenSearch: one template
    request with the patterns and field types, then only bulk requests."""
    await fake_storage.append([ev(1, DAY1)])
    await fake_storage.append([ev(2, DAY1)])
    await fake_storage.ensure_template()
    assert recorder.paths() == ["PUT /_index_template/stream_events", "POST /_bulk", "POST /_bulk"]

    template = recorder.requests[0].json()
    assert template["index_patterns"] == ["stream_events-*"]
    fields = template["template"]["mappings"]["properties"]
    types = {name: spec["type"] for name, spec in fields.items()}
    assert types | {"ts": "double", "doc_key": "keyword"} == {
        "stream_id": "keyword",
        "event_id": "keyword",
        "seq": "long",
        "type": "keyword",
        "timestamp": "date",
        "ts": "double",
        "doc_key": "keyword",
        "data": "object",
        "message": "text",
        "level": "keyword",
        "trace_id": "keyword",
    }
    assert fields["timestamp"]["format"] == "epoch_millis"
    assert fields["data"]["enabled"] is False  # stored in _source, never mapped
    assert fields["ts"]["index"] is False


async def test_a_failed_template_request_raises_and_is_retried_on_the_next_write(
    fake_storage: OpenSearchEventStorage, recorder: OpenSearchRecorder
) -> None:
    """Tested at the HTTP transport boundary, not against a real OpenSearch: a 400 answer to
    the template request raises `BackendUnavailableError`; no bulk request is sent."""
    error = {"error": {"type": "illegal_argument_exception", "reason": "bad template"}}
    recorder.reply("/_index_template/stream_events", error, status=400)
    with pytest.raises(BackendUnavailableError, match="index template"):
        await fake_storage.append([ev(1, DAY1)])
    assert recorder.paths() == ["PUT /_index_template/stream_events"]

    await fake_storage.append([ev(1, DAY1)])
    assert recorder.paths()[1:] == ["PUT /_index_template/stream_events", "POST /_bulk"]


async def test_append_is_one_bulk_request_of_ndjson_into_daily_indices(
    fake_storage: OpenSearchEventStorage, recorder: OpenSearchRecorder
) -> None:
    """Tested at the HTTP transport boundary, not against a real OpenSearch: one ``POST
    /_bulk`` with an ``index`` action and a document per event; the index is the UTC day of
    the event's timestamp; events with an id get ``<stream>:<id>`` as document id."""
    log = StreamEvent(
        "log",
        {"message": "disk full", "level": "error", "trace_id": "ab" * 16, "extra": {"k": 1}},
        "7f3a-41",
        "job-1",
        DAY2 - 0.5,  # 2026-11-24T23:59:59.5Z
    )
    progress = StreamEvent("progress", {"pct": 50}, "7f3a-42", "job-1", DAY2 + 0.25)
    loose = StreamEvent("note", "no id", None, "job-1", DAY2 + 1)
    await fake_storage.append([log, progress, loose])

    bulk = [r for r in recorder.requests if r.path.endswith("_bulk")]
    assert len(bulk) == 1
    assert (bulk[0].method, bulk[0].path, bulk[0].params) == ("POST", "/_bulk", {})
    assert bulk[0].body.endswith(b"\n")
    lines = bulk[0].ndjson()
    assert len(lines) == 6
    assert lines[0] == {"index": {"_index": "stream_events-2026.11.24", "_id": "job-1:7f3a-41"}}
    assert lines[2] == {"index": {"_index": "stream_events-2026.11.25", "_id": "job-1:7f3a-42"}}
    assert lines[4] == {"index": {"_index": "stream_events-2026.11.25"}}  # id from OpenSearch

    assert lines[1] == {
        "stream_id": "job-1",
        "event_id": "7f3a-41",
        "seq": 41,
        "type": "log",
        "timestamp": int((DAY2 - 0.5) * 1000),
        "ts": DAY2 - 0.5,
        "doc_key": "job-1:7f3a-41",
        "data": log.data,
        "message": "disk full",
        "level": "error",
        "trace_id": "ab" * 16,
    }
    assert lines[3]["seq"] == 42
    assert "message" not in lines[3]
    assert lines[5]["data"] == "no id"
    assert lines[5]["event_id"] is None
    assert "seq" not in lines[5]  # sorts after every event with a seq
    assert re.fullmatch(r"[0-9a-f]{32}", lines[5]["doc_key"])


async def test_a_retried_batch_reuses_the_same_document_ids(
    fake_storage: OpenSearchEventStorage, recorder: OpenSearchRecorder
) -> None:
    """Tested at the HTTP transport boundary, not against a real OpenSearch: sending a batch
    twice sends the same ``_id``s, so OpenSearch overwrites instead of duplicating."""
    batch = [ev(1, DAY1), ev(2, DAY1 + 1)]
    await fake_storage.append(batch)
    await fake_storage.append(batch)
    first, second = (r.ndjson()[::2] for r in recorder.requests if r.path == "/_bulk")
    assert first == second
    assert [a["index"]["_id"] for a in first] == ["s1:ep-1", "s1:ep-2"]


async def test_refresh_option_asks_bulk_to_refresh(recorder: OpenSearchRecorder) -> None:
    """Tested at the HTTP transport boundary, not against a real OpenSearch."""
    backend = OpenSearchEventStorage(recorder.client(), refresh=True, index_prefix="audit")
    try:
        await backend.append([ev(1, DAY1)])
    finally:
        await backend.aclose()
    assert recorder.paths() == ["PUT /_index_template/audit", "POST /_bulk"]
    assert recorder.requests[1].params == {"refresh": "true"}
    assert recorder.requests[1].ndjson()[0]["index"]["_index"] == "audit-2026.11.24"


async def test_bulk_item_errors_raise_with_the_reasons(
    fake_storage: OpenSearchEventStorage, recorder: OpenSearchRecorder
) -> None:
    """Tested at the HTTP transport boundary, not against a real OpenSearch: a 200 bulk answer
    with ``errors: true`` raises `BackendUnavailableError` naming the failed items."""
    failed = {
        "_index": "stream_events-2026.11.24",
        "_id": "s1:ep-2",
        "status": 400,
        "error": {"type": "mapper_parsing_exception", "reason": "failed to parse [level]"},
    }
    ok = {"_index": "stream_events-2026.11.24", "_id": "s1:ep-1", "status": 201}
    recorder.reply("/_bulk", {"errors": True, "items": [{"index": ok}, {"index": failed}]})
    with pytest.raises(BackendUnavailableError) as info:
        await fake_storage.append([ev(1, DAY1), ev(2, DAY1)])
    message = str(info.value)
    assert "rejected 1 of 2 events" in message
    assert "s1:ep-2: mapper_parsing_exception: failed to parse [level]" in message


async def test_connection_errors_raise_backend_unavailable(
    fake_storage: OpenSearchEventStorage, recorder: OpenSearchRecorder
) -> None:
    """Tested at the HTTP transport boundary, not against a real OpenSearch: aiohttp failing
    to connect (after the transport's own retries) raises `BackendUnavailableError` from every
    operation."""
    recorder.fail("", aiohttp.ClientOSError(111, "Connect call failed"), always=True)
    with pytest.raises(BackendUnavailableError, match="Connect call failed"):
        await fake_storage.append([ev(1, DAY1)])
    assert len(recorder.requests) == 4  # 1 + opensearch-py's default max_retries=3
    with pytest.raises(BackendUnavailableError, match="search failed"):
        await fake_storage.get_events("s1")
    with pytest.raises(BackendUnavailableError, match="search failed"):
        await fake_storage.query()
    with pytest.raises(BackendUnavailableError, match="count failed"):
        await fake_storage.count()


async def test_get_events_pages_with_search_after(
    fake_storage: OpenSearchEventStorage, recorder: OpenSearchRecorder
) -> None:
    """Tested at the HTTP transport boundary, not against a real OpenSearch: a search of
    ``stream_events-*`` for the stream, sorted by seq then time, fetched in pages of
    ``page_size`` with ``search_after`` from the last hit's sort values."""
    events = [ev(1, DAY1 + 0.5), ev(2, DAY1 + 0.25), ev(None, DAY1 + 3)]
    no_seq = 2**63 - 1  # what OpenSearch returns for a missing `_last` long
    page1 = [hit(events[0], [1, 1795996800500, "s1:ep-1"]), hit(events[1], [2, 1, "s1:ep-2"])]
    page2 = [hit(events[2], [no_seq, 1795996803000, "c0ffee"])]
    recorder.reply("/_search", {"hits": {"hits": page1}})
    recorder.reply("/_search", {"hits": {"hits": page2}})

    assert await fake_storage.get_events("s1") == events

    assert recorder.paths() == ["POST /stream_events-*/_search"] * 2
    first, second = (r.json() for r in recorder.requests)
    assert first["query"] == {"bool": {"filter": [{"term": {"stream_id": "s1"}}]}}
    assert [next(iter(key)) for key in first["sort"]] == ["seq", "timestamp", "doc_key"]
    assert first["sort"][0]["seq"] == {"order": "asc", "missing": "_last", "unmapped_type": "long"}
    assert first["size"] == 2
    assert "search_after" not in first
    assert second == {**first, "search_after": [2, 1, "s1:ep-2"]}


async def test_get_events_stops_on_an_empty_page(
    fake_storage: OpenSearchEventStorage, recorder: OpenSearchRecorder
) -> None:
    """Tested at the HTTP transport boundary, not against a real OpenSearch: a full last page
    costs one more search, which comes back empty."""
    events = [ev(1, DAY1), ev(2, DAY1)]
    recorder.reply(
        "/_search", {"hits": {"hits": [hit(e, [i, 0, "k"]) for i, e in enumerate(events)]}}
    )
    assert await fake_storage.get_events("s1") == events
    assert len(recorder.requests) == 2
    assert recorder.requests[1].json()["search_after"] == [1, 0, "k"]


async def test_query_body(
    fake_storage: OpenSearchEventStorage, recorder: OpenSearchRecorder
) -> None:
    """Tested at the HTTP transport boundary, not against a real OpenSearch: range on
    ``timestamp`` in epoch milliseconds (gte start, lt end), ``terms`` on type, ``term`` on the
    stream, oldest first, ``size`` = limit; events are rebuilt from the hits."""
    event = ev(3, DAY1 + 2.5)
    recorder.reply("/_search", {"hits": {"hits": [hit(event, [1, "k"])]}})
    found = await fake_storage.query(
        start=DAY1 + 1.5, end=DAY1 + 4, types=["log", "progress"], stream_id="s1", limit=50
    )
    assert found == [event]

    (request,) = recorder.requests
    assert request.path == "/stream_events-*/_search"
    ms = int(DAY1 * 1000)
    assert request.json() == {
        "query": {
            "bool": {
                "filter": [
                    {
                        "range": {
                            "timestamp": {
                                "format": "epoch_millis",
                                "gte": ms + 1500,
                                "lt": ms + 4000,
                            }
                        }
                    },
                    {"terms": {"type": ["log", "progress"]}},
                    {"term": {"stream_id": "s1"}},
                ]
            }
        },
        "sort": [
            {"timestamp": {"order": "asc", "unmapped_type": "date"}},
            {"doc_key": {"order": "asc", "unmapped_type": "keyword"}},
        ],
        "size": 50,
        "track_total_hits": False,
    }


async def test_query_beyond_one_search_window_pages_with_search_after(
    fake_storage: OpenSearchEventStorage,
    recorder: OpenSearchRecorder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Tested at the HTTP transport boundary, not against a real OpenSearch: a ``limit``
    larger than the result window (10 000, shrunk to 2 here) is fetched in pages, asking only
    for what is still missing."""
    monkeypatch.setattr(opensearch_module, "_SEARCH_WINDOW", 2)
    events = [ev(seq, DAY1 + seq) for seq in (1, 2, 3)]
    recorder.reply(
        "/_search", {"hits": {"hits": [hit(e, [i, "k"]) for i, e in enumerate(events)][:2]}}
    )
    recorder.reply("/_search", {"hits": {"hits": [hit(events[2], [2, "k"])]}})
    assert await fake_storage.query(limit=3) == events
    first, second = (r.json() for r in recorder.requests)
    assert (first["size"], second["size"]) == (2, 1)
    assert second["search_after"] == [1, "k"]


async def test_query_without_filters_and_with_limit_zero(
    fake_storage: OpenSearchEventStorage, recorder: OpenSearchRecorder
) -> None:
    """Tested at the HTTP transport boundary, not against a real OpenSearch."""
    assert await fake_storage.query() == []
    assert await fake_storage.query(limit=0) == []  # answered without a request
    (request,) = recorder.requests
    assert request.json()["query"] == {"bool": {"filter": []}}
    assert request.json()["size"] == 1000


async def test_count_body(
    fake_storage: OpenSearchEventStorage, recorder: OpenSearchRecorder
) -> None:
    """Tested at the HTTP transport boundary, not against a real OpenSearch: one ``_count`` on
    ``stream_events-*`` with the same filters as `query`."""
    recorder.reply("/_count", {"count": 17, "_shards": {"total": 2}})
    assert await fake_storage.count(start=DAY1, types=["log"]) == 17
    (request,) = recorder.requests
    assert (request.method, request.path) == ("POST", "/stream_events-*/_count")
    assert request.json() == {
        "query": {
            "bool": {
                "filter": [
                    {"range": {"timestamp": {"format": "epoch_millis", "gte": int(DAY1 * 1000)}}},
                    {"terms": {"type": ["log"]}},
                ]
            }
        }
    }


async def test_aclose_closes_the_http_session(recorder: OpenSearchRecorder) -> None:
    """Tested at the HTTP transport boundary, not against a real OpenSearch."""
    backend = OpenSearchEventStorage(recorder.client())
    await backend.count()
    await backend.aclose()
    assert recorder.closed


@pytest.mark.parametrize("prefix", ["Upper", "-dash", "", "a*b", "a b", "x/y"])
def test_bad_index_prefix_is_refused(recorder: OpenSearchRecorder, prefix: str) -> None:
    """Tested at the HTTP transport boundary, not against a real OpenSearch."""
    with pytest.raises(ConfigurationError, match="index_prefix"):
        OpenSearchEventStorage(recorder.client(), index_prefix=prefix)


# Auth. `basic` goes through opensearch-py's default AIOHttpConnection, `aws` through its
# AsyncHttpConnection, which calls the signer with the final method, URL, body and headers and
# applies the headers it returns. Both connection classes run their real `perform_request`
# here; only the aiohttp session below them is the recorder, so the recorded headers are the
# ones the library applied (no re-implementation of auth in the fake).


async def test_basic_auth_sends_an_authorization_header(recorder: OpenSearchRecorder) -> None:
    """Tested at the HTTP transport boundary, not against a real OpenSearch."""
    backend = OpenSearchEventStorage.from_settings(
        HOST,
        PORT,
        auth_type="basic",
        username="admin",
        password="s3cr:et",  # noqa: S106 - a test value
        connection_class=RecordingAIOHttpConnection,
        recorder=recorder,
    )
    try:
        await backend.count()
    finally:
        await backend.aclose()
    expected = "Basic " + base64.b64encode(b"admin:s3cr:et").decode()
    assert recorder.requests[0].headers["authorization"] == expected


def test_basic_auth_needs_username_and_password() -> None:
    """Tested at the HTTP transport boundary, not against a real OpenSearch (no request)."""
    with pytest.raises(ConfigurationError, match="username and password"):
        OpenSearchEventStorage.from_settings(HOST, PORT, auth_type="basic", username="admin")


async def test_no_auth_sends_no_authorization_header(recorder: OpenSearchRecorder) -> None:
    """Tested at the HTTP transport boundary, not against a real OpenSearch."""
    backend = OpenSearchEventStorage.from_settings(
        HOST, PORT, connection_class=RecordingAIOHttpConnection, recorder=recorder
    )
    try:
        await backend.count()
    finally:
        await backend.aclose()
    assert "authorization" not in recorder.requests[0].headers


def test_unknown_auth_type_is_refused() -> None:
    """Tested at the HTTP transport boundary, not against a real OpenSearch (no request)."""
    with pytest.raises(ConfigurationError, match="auth_type"):
        OpenSearchEventStorage.from_settings(HOST, PORT, auth_type="kerberos")  # type: ignore[arg-type]


AWS_SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"  # noqa: S105 - AWS's doc example
_AWS_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
)


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> pytest.MonkeyPatch:
    """No AWS credentials or region anywhere boto3 looks (no files, no instance metadata)."""
    pytest.importorskip("boto3", reason="auth_type 'aws' needs boto3")
    for name in _AWS_ENV:
        monkeypatch.delenv(name, raising=False)
    for name in ("AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE", "BOTO_CONFIG"):
        monkeypatch.setenv(name, str(tmp_path / "absent"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return monkeypatch


@pytest.fixture
def aws_credentials(aws_env: pytest.MonkeyPatch) -> None:
    """Static fake credentials and region in the environment."""
    aws_env.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    aws_env.setenv("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
    aws_env.setenv("AWS_SESSION_TOKEN", "FAKE-SESSION-TOKEN")
    aws_env.setenv("AWS_REGION", "eu-west-1")


@pytest.mark.usefixtures("aws_credentials")
async def test_aws_auth_signs_every_request_with_sigv4(recorder: OpenSearchRecorder) -> None:
    """Tested at the HTTP transport boundary, not against a real OpenSearch: each recorded
    request carries a SigV4 ``Authorization`` for service ``es`` in the region, ``X-Amz-Date``,
    the session token and the body hash; the signature, recomputed independently of botocore
    from the recorded method, path, query, headers and body, matches — so the signer ran on
    exactly the request that was sent."""
    backend = OpenSearchEventStorage.from_settings(
        HOST,
        PORT,
        auth_type="aws",
        connection_class=RecordingAsyncHttpConnection,
        recorder=recorder,
    )
    try:
        await backend.append([ev(1, DAY1)])
        await backend.query(start=DAY1, types=["progress"])
    finally:
        await backend.aclose()

    assert len(recorder.requests) == 3
    for request in recorder.requests:
        headers = request.headers
        match = re.fullmatch(
            r"AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/(\d{8})/eu-west-1/es/aws4_request, "
            r"SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})",
            headers["authorization"],
        )
        assert match is not None, headers["authorization"]
        assert re.fullmatch(r"\d{8}T\d{6}Z", headers["x-amz-date"])
        assert headers["x-amz-date"].startswith(match[1])
        assert headers["x-amz-security-token"] == "FAKE-SESSION-TOKEN"
        assert headers["x-amz-content-sha256"] == hashlib.sha256(request.body).hexdigest()
        assert {"host", "x-amz-date", "x-amz-content-sha256"} <= set(match[2].split(";"))
        assert sigv4_signature(request, AWS_SECRET) == match[3]


@pytest.mark.usefixtures("aws_credentials")
async def test_aws_auth_uses_the_connection_class_that_applies_signers() -> None:
    """Tested at the HTTP transport boundary, not against a real OpenSearch (no request): the
    default AIOHttpConnection would treat the signer as a basic-auth string."""
    backend = OpenSearchEventStorage.from_settings(HOST, PORT, auth_type="aws", region="us-east-2")
    try:
        transport: Any = backend.client.transport
        assert transport.connection_class is AsyncHttpConnection
        auth = transport.kwargs["http_auth"]
        assert isinstance(auth, AWSV4SignerAsyncAuth)
        assert (auth.signer.region, auth.signer.service) == ("us-east-2", "es")
    finally:
        await backend.aclose()


def test_aws_auth_without_credentials_is_a_configuration_error(
    aws_env: pytest.MonkeyPatch,
) -> None:
    """Tested at the HTTP transport boundary, not against a real OpenSearch (no request)."""
    aws_env.setenv("AWS_REGION", "eu-west-1")
    with pytest.raises(ConfigurationError, match="no AWS credentials"):
        OpenSearchEventStorage.from_settings(HOST, PORT, auth_type="aws")


def test_aws_auth_without_region_is_a_configuration_error(aws_env: pytest.MonkeyPatch) -> None:
    """Tested at the HTTP transport boundary, not against a real OpenSearch (no request)."""
    aws_env.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    aws_env.setenv("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
    with pytest.raises(ConfigurationError, match="region"):
        OpenSearchEventStorage.from_settings(HOST, PORT, auth_type="aws")


def test_aws_auth_without_boto3_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tested at the HTTP transport boundary, not against a real OpenSearch (no request)."""
    monkeypatch.setitem(sys.modules, "boto3", None)
    with pytest.raises(ConfigurationError, match="needs boto3"):
        OpenSearchEventStorage.from_settings(HOST, PORT, auth_type="aws", region="eu-west-1")


def test_missing_opensearch_py_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tested at the HTTP transport boundary, not against a real OpenSearch (no request):
    importing the module without opensearch-py raises `ConfigurationError` naming the extra."""
    monkeypatch.setitem(sys.modules, "opensearchpy", None)
    monkeypatch.delitem(sys.modules, "streaming_mw.storage.opensearch")
    with pytest.raises(ConfigurationError, match=r"pip install 'streaming-mw\[opensearch\]'"):
        importlib.import_module("streaming_mw.storage.opensearch")
