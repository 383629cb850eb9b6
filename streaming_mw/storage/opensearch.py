"""`OpenSearchEventStorage`: stream events in daily OpenSearch indices (the ``opensearch`` extra).

Each event is one document of ``<index_prefix>-YYYY.MM.DD`` (the UTC day of its timestamp);
reads search ``<index_prefix>-*``. An index template, put once before the first write, maps the
searchable fields and stores ``data`` without indexing it, so arbitrary event payloads never
grow the mapping. Timestamps are indexed with millisecond resolution; the exact float is kept in
the document and returned unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import math
import os
import re
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import orjson

from ..errors import BackendUnavailableError, ConfigurationError, InvalidEventError
from ..events import StreamEvent
from .base import order_key

try:
    from opensearchpy import AsyncHttpConnection, AsyncOpenSearch, AWSV4SignerAsyncAuth
    from opensearchpy.exceptions import ImproperlyConfigured, TransportError
except ImportError as exc:
    raise ConfigurationError(
        "the OpenSearch event storage needs opensearch-py with aiohttp: "
        "pip install 'streaming-mw[opensearch]'"
    ) from exc

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

__all__ = ["OpenSearchEventStorage"]

_INDEX_PREFIX = re.compile(r"[a-z0-9][a-z0-9_.-]{0,200}")
_SEARCH_WINDOW = 10_000  # OpenSearch's default index.max_result_window
_MAX_REASONS = 3

_MAPPINGS: dict[str, Any] = {
    "properties": {
        "stream_id": {"type": "keyword"},
        "event_id": {"type": "keyword"},
        "seq": {"type": "long"},
        "type": {"type": "keyword"},
        "timestamp": {"type": "date", "format": "epoch_millis"},
        # the exact float timestamp, returned as stored; not searchable
        "ts": {"type": "double", "index": False, "doc_values": False},
        # unique per document: the last sort key, so search_after pages never skip a tie
        "doc_key": {"type": "keyword"},
        "data": {"type": "object", "enabled": False},
        "message": {"type": "text"},
        "level": {"type": "keyword"},
        "trace_id": {"type": "keyword"},
    }
}
_COPIED_FIELDS = ("message", "level", "trace_id")


def _millis(seconds: float) -> int:
    """Unix seconds as whole epoch milliseconds (rounded to microseconds first, then floored)."""
    return math.floor(round(seconds * 1000, 3))


def _day_index(prefix: str, seconds: float) -> str:
    """The daily index of an event: ``<prefix>-YYYY.MM.DD`` of its UTC day."""
    return f"{prefix}-{datetime.fromtimestamp(seconds, UTC):%Y.%m.%d}"


def _document(event: StreamEvent, doc_key: str) -> dict[str, Any]:
    """The document stored for ``event``; ``seq`` only when `order_key` finds one."""
    doc: dict[str, Any] = {
        "stream_id": event.stream_id,
        "event_id": event.id,
        "type": event.type,
        "timestamp": _millis(event.timestamp),
        "ts": event.timestamp,
        "doc_key": doc_key,
        "data": event.data,
    }
    seq = order_key(event)[0]
    if math.isfinite(seq):
        doc["seq"] = int(seq)
    if isinstance(event.data, dict):
        for name in _COPIED_FIELDS:
            value = event.data.get(name)
            if isinstance(value, str):
                doc[name] = value
    return doc


def _event(source: dict[str, Any]) -> StreamEvent:
    """Rebuild a `StreamEvent` from a stored document."""
    timestamp = source.get("ts")
    if not isinstance(timestamp, int | float):
        timestamp = float(source.get("timestamp", 0)) / 1000
    return StreamEvent(
        source["type"],
        source.get("data"),
        source.get("event_id"),
        source.get("stream_id"),
        float(timestamp),
    )


def _filters(
    start: float | None,
    end: float | None,
    types: Sequence[str] | None,
    stream_id: str | None,
) -> dict[str, Any]:
    """A ``bool`` filter query: ``start <= timestamp < end``, type in ``types``, the stream."""
    clauses: list[dict[str, Any]] = []
    if start is not None or end is not None:
        bounds: dict[str, Any] = {"format": "epoch_millis"}
        if start is not None:
            bounds["gte"] = _millis(start)
        if end is not None:
            bounds["lt"] = math.ceil(round(end * 1000, 3))
        clauses.append({"range": {"timestamp": bounds}})
    if types:
        clauses.append({"terms": {"type": list(types)}})
    if stream_id is not None:
        clauses.append({"term": {"stream_id": stream_id}})
    return {"bool": {"filter": clauses}}


def _bulk_error(response: dict[str, Any], total: int) -> BackendUnavailableError:
    """The error for a bulk response whose ``errors`` flag is set, naming the first reasons."""
    reasons = []
    for item in response.get("items", ()):
        result: dict[str, Any] = next(iter(item.values()), {})
        error = result.get("error")
        if error is not None:
            if isinstance(error, dict):
                error = f"{error.get('type', 'error')}: {error.get('reason', '')}"
            reasons.append(f"{result.get('_index')}/{result.get('_id')}: {error}")
    shown = "; ".join(reasons[:_MAX_REASONS]) or "no reason given"
    if len(reasons) > _MAX_REASONS:
        shown += f" (and {len(reasons) - _MAX_REASONS} more)"
    return BackendUnavailableError(f"OpenSearch rejected {len(reasons)} of {total} events: {shown}")


@contextlib.contextmanager
def _backend_errors(operation: str) -> Iterator[None]:
    """Turn opensearch-py's transport and connection errors into `BackendUnavailableError`."""
    try:
        yield
    except (TransportError, ImproperlyConfigured) as exc:
        raise BackendUnavailableError(f"OpenSearch {operation} failed: {exc}") from exc


def _aws_auth(region: str | None) -> AWSV4SignerAsyncAuth:
    """A SigV4 signer with credentials from the standard AWS chain (boto3)."""
    try:
        boto3: Any = importlib.import_module("boto3")
    except ImportError as exc:
        raise ConfigurationError(
            "OpenSearch auth_type 'aws' needs boto3: pip install 'streaming-mw[opensearch]' boto3"
        ) from exc
    session = boto3.Session()
    region = (
        region
        or os.environ.get("AWS_REGION")
        or os.environ.get("AWS_DEFAULT_REGION")
        or session.region_name
    )
    if not region:
        raise ConfigurationError(
            "OpenSearch auth_type 'aws' needs a region: pass region= or set AWS_REGION"
        )
    credentials = session.get_credentials()
    if credentials is None:
        raise ConfigurationError(
            "OpenSearch auth_type 'aws' found no AWS credentials (environment, shared "
            "credentials file, or instance/container role)"
        )
    return AWSV4SignerAsyncAuth(credentials, region, "es")


class OpenSearchEventStorage:
    """`EventStorage` in OpenSearch: one bulk request per batch, daily indices, paged reads.

    ``refresh=True`` makes every write visible to searches at once (tests); production leaves
    it off and relies on the index refresh interval. Connection and transport errors, and bulk
    items that fail, raise `BackendUnavailableError`.
    """

    def __init__(
        self,
        client: AsyncOpenSearch,
        *,
        index_prefix: str = "stream_events",
        refresh: bool = False,
        page_size: int = 1000,
    ) -> None:
        if not _INDEX_PREFIX.fullmatch(index_prefix):
            raise ConfigurationError(
                "OpenSearch index_prefix must be lower-case [a-z0-9_.-] starting with a letter "
                f"or digit, got {index_prefix!r}"
            )
        if not 0 < page_size <= _SEARCH_WINDOW:
            raise ConfigurationError(f"page_size must be 1-{_SEARCH_WINDOW}, got {page_size!r}")
        self.client = client
        self.index_prefix = index_prefix
        self.refresh = refresh
        self.page_size = page_size
        self._pattern = f"{index_prefix}-*"
        self._template_ready = False
        self._template_lock = asyncio.Lock()

    @classmethod
    def from_settings(
        cls,
        host: str,
        port: int,
        *,
        use_ssl: bool = False,
        auth_type: Literal["none", "basic", "aws"] = "none",
        username: str | None = None,
        password: str | None = None,
        region: str | None = None,
        index_prefix: str = "stream_events",
        **client_options: Any,
    ) -> OpenSearchEventStorage:
        """Build the storage and its `AsyncOpenSearch` client from the ``OPENSEARCH_*`` values.

        ``basic`` sends ``username``/``password``; ``aws`` signs every request with SigV4
        (service ``es``) using the standard AWS credential chain and ``region`` (or
        ``AWS_REGION``/``AWS_DEFAULT_REGION``). ``client_options`` go to `AsyncOpenSearch`
        (``ca_certs``, ``timeout``, ...). Missing credentials raise `ConfigurationError`.
        """
        options: dict[str, Any] = {
            "hosts": [{"host": host, "port": port}],
            "use_ssl": use_ssl,
        }
        if auth_type == "basic":
            if not username or password is None:
                raise ConfigurationError("OpenSearch auth_type 'basic' needs username and password")
            options["http_auth"] = (username, password)
        elif auth_type == "aws":
            options["http_auth"] = _aws_auth(region)
            # The default AIOHttpConnection only understands basic auth; this one calls a
            # callable http_auth per request and applies the headers it returns.
            options["connection_class"] = AsyncHttpConnection
        elif auth_type != "none":
            raise ConfigurationError(
                f"OpenSearch auth_type must be 'none', 'basic' or 'aws', got {auth_type!r}"
            )
        options.update(client_options)
        return cls(AsyncOpenSearch(**options), index_prefix=index_prefix)

    def index_for(self, event: StreamEvent) -> str:
        """The daily index ``event`` is written to."""
        return _day_index(self.index_prefix, event.timestamp)

    async def ensure_template(self) -> None:
        """Put the index template of ``<index_prefix>-*`` (idempotent; done once per instance
        before the first write, again after a failure)."""
        async with self._template_lock:
            if self._template_ready:
                return
            body = {"index_patterns": [self._pattern], "template": {"mappings": _MAPPINGS}}
            with _backend_errors("index template"):
                await self.client.indices.put_index_template(name=self.index_prefix, body=body)
            self._template_ready = True

    async def append(self, events: Sequence[StreamEvent]) -> None:
        """Index ``events`` with one ``_bulk`` request. Events with an id get the document id
        ``<stream_id>:<event_id>``, so a retried batch overwrites instead of duplicating."""
        if not events:
            return
        if not self._template_ready:
            await self.ensure_template()
        lines: list[bytes] = []
        for event in events:
            action: dict[str, Any] = {"_index": self.index_for(event)}
            if event.id is not None:
                action["_id"] = doc_key = f"{event.stream_id or ''}:{event.id}"
            else:
                doc_key = uuid.uuid4().hex
            try:
                document = orjson.dumps(_document(event, doc_key))
            except TypeError as exc:
                raise InvalidEventError(f"event data is not JSON-serialisable: {exc}") from exc
            lines += (orjson.dumps({"index": action}), document)
        params = {"refresh": "true"} if self.refresh else None
        with _backend_errors("bulk index"):
            response = await self.client.bulk(body=b"\n".join(lines) + b"\n", params=params)
        if response.get("errors"):
            raise _bulk_error(response, len(events))

    async def _search(
        self, query: dict[str, Any], sort: list[dict[str, Any]], limit: int | None, page: int
    ) -> list[StreamEvent]:
        """Every hit of ``query`` in ``sort`` order (at most ``limit``), paging with
        ``search_after`` by ``page`` hits, so there is no result window limit."""
        events: list[StreamEvent] = []
        after: list[Any] | None = None
        while limit is None or len(events) < limit:
            size = page if limit is None else min(page, limit - len(events))
            body: dict[str, Any] = {
                "query": query,
                "sort": sort,
                "size": size,
                "track_total_hits": False,
            }
            if after is not None:
                body["search_after"] = after
            with _backend_errors("search"):
                response = await self.client.search(index=self._pattern, body=body)
            hits = response["hits"]["hits"]
            events += (_event(hit["_source"]) for hit in hits)
            if len(hits) < size:
                break
            after = hits[-1]["sort"]
        return events

    async def get_events(self, stream_id: str) -> list[StreamEvent]:
        """Every stored event of ``stream_id`` in publication order: by ``seq`` (events without
        one last), then timestamp, like `order_key`."""
        sort = [
            {"seq": {"order": "asc", "missing": "_last", "unmapped_type": "long"}},
            {"timestamp": {"order": "asc", "unmapped_type": "date"}},
            {"doc_key": {"order": "asc", "unmapped_type": "keyword"}},
        ]
        query = {"bool": {"filter": [{"term": {"stream_id": stream_id}}]}}
        return await self._search(query, sort, None, self.page_size)

    async def query(
        self,
        *,
        start: float | None = None,
        end: float | None = None,
        types: Sequence[str] | None = None,
        stream_id: str | None = None,
        limit: int = 1000,
    ) -> list[StreamEvent]:
        """Events with ``start <= timestamp < end`` (Unix seconds, millisecond resolution), of
        ``types``, of ``stream_id``, oldest first, at most ``limit``."""
        if limit <= 0:
            return []
        sort = [
            {"timestamp": {"order": "asc", "unmapped_type": "date"}},
            {"doc_key": {"order": "asc", "unmapped_type": "keyword"}},
        ]
        query = _filters(start, end, types, stream_id)
        return await self._search(query, sort, limit, _SEARCH_WINDOW)

    async def count(
        self,
        *,
        start: float | None = None,
        end: float | None = None,
        types: Sequence[str] | None = None,
        stream_id: str | None = None,
    ) -> int:
        """How many events `query` would match without a limit (one ``_count`` request)."""
        body = {"query": _filters(start, end, types, stream_id)}
        with _backend_errors("count"):
            response = await self.client.count(index=self._pattern, body=body)
        return int(response["count"])

    async def aclose(self) -> None:
        """Close the client's HTTP sessions."""
        await self.client.close()
