"""A fake HTTP boundary for opensearch-py: record every request, answer canned JSON.

Only the aiohttp ``ClientSession`` is replaced. Everything above it is the real opensearch-py:
`AsyncOpenSearch`, its transport (retries, serialisation), the connection classes
(`AIOHttpConnection`, `AsyncHttpConnection`) with their own ``perform_request`` — so basic auth
headers and a callable ``http_auth`` such as `AWSV4SignerAsyncAuth` are applied by the library
code that runs in production, and what is recorded is what aiohttp would have sent.

The hook is `_create_aiohttp_session`, which both connection classes call lazily before their
first request. It is private to opensearch-py: if it is renamed, no request is recorded and the
tests using this module fail instead of passing silently.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import orjson
from multidict import CIMultiDict, CIMultiDictProxy
from opensearchpy import AIOHttpConnection, AsyncHttpConnection, AsyncOpenSearch

if TYPE_CHECKING:
    from types import TracebackType

    import aiohttp

__all__ = [
    "HOST",
    "PORT",
    "OpenSearchRecorder",
    "RecordedRequest",
    "RecordingAIOHttpConnection",
    "RecordingAsyncHttpConnection",
    "sigv4_signature",
]

HOST = "opensearch.test"
PORT = 9200


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One HTTP request as it would have left aiohttp."""

    method: str
    url: str
    path: str
    """Percent-decoded path, e.g. ``/stream_events-*/_search``."""
    params: dict[str, str]
    body: bytes
    headers: dict[str, str]
    """Header names in lower case."""

    def json(self) -> Any:
        """The body parsed as one JSON document."""
        return orjson.loads(self.body)

    def ndjson(self) -> list[Any]:
        """The body parsed as newline-delimited JSON (the ``_bulk`` format)."""
        return [orjson.loads(line) for line in self.body.split(b"\n") if line]


@dataclass(slots=True)
class _Canned:
    suffix: str
    status: int
    body: Any
    error: BaseException | None
    sticky: bool


class _FakeResponse:
    """The parts of an aiohttp response opensearch-py reads."""

    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.headers = CIMultiDictProxy(CIMultiDict({"content-type": "application/json"}))
        self._text = orjson.dumps(body).decode()

    async def text(self) -> str:
        return self._text

    async def __aenter__(self) -> _FakeResponse:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


class _FakeSession:
    """Stands in for ``aiohttp.ClientSession``: hands each request to the recorder."""

    def __init__(self, recorder: OpenSearchRecorder) -> None:
        self.recorder = recorder

    def request(
        self,
        method: str,
        url: Any,
        *,
        data: bytes | str | None = None,
        headers: dict[str, str] | None = None,
        auth: aiohttp.BasicAuth | None = None,
        **_: Any,
    ) -> _FakeResponse:
        all_headers = {name.lower(): value for name, value in (headers or {}).items()}
        if auth is not None:  # what aiohttp does with a BasicAuth
            all_headers["authorization"] = auth.encode()
        body = data.encode() if isinstance(data, str) else (data or b"")
        parts = urlsplit(str(url))
        request = RecordedRequest(
            method=method,
            url=str(url),
            path=unquote(parts.path),
            params=dict(parse_qsl(parts.query, keep_blank_values=True)),
            body=body,
            headers=all_headers,
        )
        return self.recorder.handle(request)

    async def close(self) -> None:
        self.recorder.closed = True


class RecordingAIOHttpConnection(AIOHttpConnection):
    """opensearch-py's default connection class, on a recording session.

    Pass ``connection_class=RecordingAIOHttpConnection, recorder=<OpenSearchRecorder>`` to
    `AsyncOpenSearch`: the transport hands unknown options to the connection class."""

    def __init__(self, *, recorder: OpenSearchRecorder, **kwargs: Any) -> None:
        self.recorder = recorder
        super().__init__(**kwargs)

    async def _create_aiohttp_session(self) -> None:
        self.session = _FakeSession(self.recorder)


class RecordingAsyncHttpConnection(AsyncHttpConnection):
    """opensearch-py's `AsyncHttpConnection` (the one that applies a callable ``http_auth``
    such as the SigV4 signer), on a recording session."""

    def __init__(self, *, recorder: OpenSearchRecorder, **kwargs: Any) -> None:
        self.recorder = recorder
        super().__init__(**kwargs)

    async def _create_aiohttp_session(self) -> None:
        self.session = _FakeSession(self.recorder)


@dataclass(slots=True)
class OpenSearchRecorder:
    """Records requests and answers them: queued replies first (matched by path suffix, in
    order), else a plausible default (template acknowledged, bulk items created, no hits,
    count 0)."""

    requests: list[RecordedRequest] = field(default_factory=list)
    closed: bool = False
    _canned: list[_Canned] = field(default_factory=list)

    def reply(self, suffix: str, body: Any, *, status: int = 200) -> None:
        """Answer the next request whose path ends with ``suffix`` with ``body``."""
        self._canned.append(_Canned(suffix, status, body, None, sticky=False))

    def fail(self, suffix: str, error: BaseException, *, always: bool = False) -> None:
        """Raise ``error`` from aiohttp for the next (or, with ``always``, every) request whose
        path ends with ``suffix``."""
        self._canned.append(_Canned(suffix, 0, None, error, sticky=always))

    def handle(self, request: RecordedRequest) -> _FakeResponse:
        self.requests.append(request)
        for canned in self._canned:
            if request.path.endswith(canned.suffix):
                if not canned.sticky:
                    self._canned.remove(canned)
                if canned.error is not None:
                    raise canned.error
                return _FakeResponse(canned.status, canned.body)
        return _FakeResponse(200, _default_reply(request))

    def paths(self) -> list[str]:
        """``METHOD /path`` of every recorded request, in order."""
        return [f"{r.method} {r.path}" for r in self.requests]

    def client(self, **options: Any) -> AsyncOpenSearch:
        """An `AsyncOpenSearch` whose HTTP goes to this recorder."""
        options.setdefault("connection_class", RecordingAIOHttpConnection)
        return AsyncOpenSearch(hosts=[{"host": HOST, "port": PORT}], recorder=self, **options)


def _default_reply(request: RecordedRequest) -> Any:
    if request.path.endswith("/_bulk"):
        actions = request.ndjson()[::2]
        items = [
            {"index": {**a["index"], "_id": a["index"].get("_id", f"auto{i}"), "status": 201}}
            for i, a in enumerate(actions)
        ]
        return {"took": 1, "errors": False, "items": items}
    if request.path.endswith("/_search"):
        return {"took": 1, "timed_out": False, "hits": {"hits": []}}
    if request.path.endswith("/_count"):
        return {"count": 0}
    return {"acknowledged": True}


_AUTH = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<scope>\d{8}/[^/]+/[^/]+/aws4_request), "
    r"SignedHeaders=(?P<signed>[a-z0-9;-]+), Signature=(?P<signature>[0-9a-f]{64})"
)


def sigv4_signature(request: RecordedRequest, secret_key: str) -> str:
    """Recompute, independently of botocore, the SigV4 signature of a recorded request.

    Uses the credential scope and the ``SignedHeaders`` list of its ``Authorization`` header and
    the recorded method, path, query, header values and body; equal to the header's signature
    only if the signer ran on exactly this request.
    """
    match = _AUTH.fullmatch(request.headers["authorization"])
    if match is None:
        raise AssertionError(f"not a SigV4 header: {request.headers['authorization']!r}")
    netloc = urlsplit(request.url).netloc
    headers = {**request.headers, "host": request.headers.get("host", netloc)}
    signed = match["signed"].split(";")
    canonical = "\n".join(
        [
            request.method,
            quote(request.path, safe="/~"),
            "&".join(
                f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}"
                for k, v in sorted(request.params.items())
            ),
            "".join(f"{name}:{' '.join(headers[name].split())}\n" for name in signed),
            match["signed"],
            hashlib.sha256(request.body).hexdigest(),
        ]
    )
    to_sign = "\n".join(
        [
            "AWS4-HMAC-SHA256",
            request.headers["x-amz-date"],
            match["scope"],
            hashlib.sha256(canonical.encode()).hexdigest(),
        ]
    )
    key = ("AWS4" + secret_key).encode()
    for part in match["scope"].split("/"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
