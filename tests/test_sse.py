"""SSE framing and parsing: injection safety, spec corner cases, and round-trip properties."""

from __future__ import annotations

import orjson
import pytest
from fastapi.sse import ServerSentEvent, format_sse_event
from hypothesis import given
from hypothesis import strategies as st

from streaming_mw import InvalidEventError, StreamEvent, encode_stream_event
from streaming_mw.errors import InvalidFieldError
from streaming_mw.sse import (
    PING,
    SSEComment,
    SSEEvent,
    SSEParser,
    encode,
    encode_comment,
    encode_item,
    encode_retry,
    sse_headers,
)

LINE_BREAKS = ["\r", "\n", "\r\n"]
TRICKY = [*LINE_BREAKS, "\0", "\ufeff", " ", ":", "data: x", "\u2028", "\x85", "é", "😀"]

text_pieces = st.lists(st.one_of(st.text(max_size=8), st.sampled_from(TRICKY)), max_size=8)
tricky_text = text_pieces.map("".join)


def parse(raw: bytes) -> list[SSEEvent | SSEComment]:
    return SSEParser().feed(raw)


def normalise(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def test_text_data_is_split_on_every_line_break() -> None:
    assert encode(data="a\r\nb\rc\nd") == b"data: a\ndata: b\ndata: c\ndata: d\n\n"


def test_non_string_data_is_one_line_of_compact_json() -> None:
    frame = encode(data={"message": "a\nb", "n": [1, 2]}, event="log", id="e-1")
    assert frame == b'id: e-1\nevent: log\ndata: {"message":"a\\nb","n":[1,2]}\n\n'


@pytest.mark.parametrize("field", ["event", "id"])
@pytest.mark.parametrize("bad", ["a\rb", "a\nb", "a\r\nb", "a\0b", "x\n\ndata: forged"])
def test_line_breaks_and_nul_in_event_or_id_are_rejected(field: str, bad: str) -> None:
    with pytest.raises(InvalidFieldError) as info:
        encode(data="x", **{field: bad})  # type: ignore[arg-type]
    assert info.value.field == field
    assert isinstance(info.value, ValueError)


def test_empty_event_name_is_rejected_but_empty_id_is_allowed() -> None:
    with pytest.raises(InvalidFieldError, match="empty"):
        encode(data="x", event="")
    assert parse(encode(data="x", id="")) == [SSEEvent("x", id="")]


def test_injection_through_data_stays_inside_one_event() -> None:
    message = "a\n\nevent: x\ndata: y"
    frame = encode_stream_event(StreamEvent("log", {"message": message, "level": "info"}, "e-1"))
    [event] = parse(frame)
    assert isinstance(event, SSEEvent)
    assert event.event == "log"
    assert event.id == "e-1"
    assert orjson.loads(event.data) == {"message": message, "level": "info"}


def test_text_injection_is_split_into_data_lines_of_one_event() -> None:
    [event] = parse(encode(data="a\n\nevent: x\ndata: y", event="log"))
    assert event == SSEEvent("a\n\nevent: x\ndata: y", event="log")


@pytest.mark.parametrize("retry", [-1, 1.5, True, "10"])
def test_retry_must_be_a_non_negative_integer(retry: object) -> None:
    with pytest.raises(InvalidEventError, match="retry"):
        encode(retry=retry)  # type: ignore[arg-type]


def test_empty_frame_is_refused() -> None:
    with pytest.raises(InvalidEventError):
        encode()


def test_comment_retry_and_ping_frames() -> None:
    parser = SSEParser()
    assert parser.feed(PING) == [SSEComment("ping")]
    assert parser.feed(encode_comment("two\nlines")) == [SSEComment("two"), SSEComment("lines")]
    assert parser.feed(encode_retry(2500)) == []
    assert parser.retry == 2500


def test_data_that_is_not_json_serialisable_raises_invalid_event() -> None:
    with pytest.raises(InvalidEventError, match="JSON"):
        encode(data={"x": object()})


def test_lone_surrogates_raise_invalid_event() -> None:
    with pytest.raises(InvalidEventError, match="Unicode"):
        encode(data="\ud800")


def test_headers() -> None:
    headers = sse_headers("abc")
    assert headers == {
        "content-type": "text/event-stream",
        "cache-control": "no-store",
        "x-accel-buffering": "no",
        "x-stream-id": "abc",
    }
    assert "connection" not in headers
    with pytest.raises(InvalidFieldError):
        sse_headers("a\nb")


# --- fastapi.sse.ServerSentEvent -------------------------------------------------------------


@pytest.mark.parametrize(
    "sse",
    [
        ServerSentEvent(data="hello", event="greeting", id="1"),
        ServerSentEvent(data={"a": [1, 2], "b": "x\ny"}),
        ServerSentEvent(raw_data="line one\nline two", retry=3000),
        ServerSentEvent(comment="keep-alive"),
        ServerSentEvent(data=None, event="empty", id="2"),
    ],
)
def test_fastapi_server_sent_event_parses_like_fastapis_own_encoding(sse: ServerSentEvent) -> None:
    data_str = sse.raw_data if sse.raw_data is not None else None
    if sse.data is not None:
        data_str = orjson.dumps(sse.data).decode()
    theirs = format_sse_event(
        data_str=data_str, event=sse.event, id=sse.id, retry=sse.retry, comment=sse.comment
    )
    assert parse(encode_item(sse)) == parse(theirs)


def test_encode_item_accepts_our_event_types() -> None:
    event = StreamEvent("progress", {"percent": 5}, "e-3")
    assert encode_item(event) == encode_stream_event(event)
    assert parse(encode_item(SSEEvent("t", event="x", id="7"))) == [SSEEvent("t", "x", "7")]


# --- parser corner cases (WHATWG event stream interpretation) --------------------------------


def test_parser_handles_crlf_split_across_chunks_and_split_utf8() -> None:
    raw = "data: é😀\r\n\r\n".encode()
    parser = SSEParser()
    out = [item for index in range(len(raw)) for item in parser.feed(raw[index : index + 1])]
    assert out == [SSEEvent("é😀")]


def test_parser_strips_leading_bom_once_and_one_space_after_colon() -> None:
    assert parse("\ufeffdata:  two spaces\n\n".encode()) == [SSEEvent(" two spaces")]
    assert parse(b"data:no-space\n\n") == [SSEEvent("no-space")]


def test_parser_ignores_id_with_nul_unknown_fields_and_bad_retry() -> None:
    parser = SSEParser()
    out = parser.feed(b"id: 1\n\nid: a\0b\nfoo: bar\nretry: 12x\ndata: d\n\n")
    assert out == [SSEEvent("d")]
    assert parser.last_event_id == "1"
    assert parser.retry is None


def test_parser_does_not_dispatch_blocks_without_data_or_unterminated_events() -> None:
    parser = SSEParser()
    assert parser.feed(b"event: x\nid: 9\n\ndata: partial") == []
    assert parser.last_event_id == "9"


def test_parser_field_without_colon_has_empty_value() -> None:
    assert parse(b"data\ndata\n\n") == [SSEEvent("\n")]


# --- properties -----------------------------------------------------------------------------


def _forbidden(value: str | None, *, is_event: bool) -> bool:
    if value is None:
        return False
    return any(c in value for c in "\r\n\0") or (is_event and value == "")


@given(event=st.none() | tricky_text, id_=st.none() | tricky_text, data=tricky_text)
def test_text_round_trip_or_documented_error(event: str | None, id_: str | None, data: str) -> None:
    if _forbidden(event, is_event=True) or _forbidden(id_, is_event=False):
        with pytest.raises(InvalidFieldError):
            encode(data=data, event=event, id=id_)
        return
    frame = encode(data=data, event=event, id=id_)
    assert parse(frame) == [SSEEvent(normalise(data), event, id_)]


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | tricky_text,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(tricky_text, children, max_size=4)
    ),
    max_leaves=12,
)


@given(data=json_values, event=tricky_text, chunking=st.data())
def test_json_round_trip_exact_even_when_fed_in_random_chunks(
    data: object, event: str, chunking: st.DataObject
) -> None:
    if _forbidden(event, is_event=True):
        return
    frame = encode_stream_event(StreamEvent(event, data, "abc-1"))  # type: ignore[arg-type]
    cuts = sorted(chunking.draw(st.lists(st.integers(0, len(frame)), max_size=6)))
    parser = SSEParser()
    out = []
    for start, end in zip([0, *cuts], [*cuts, len(frame)], strict=True):
        out.extend(parser.feed(frame[start:end]))
    [parsed] = out
    assert isinstance(parsed, SSEEvent)
    assert (parsed.event, parsed.id) == (event, "abc-1")
    assert orjson.loads(parsed.data) == data


@given(data=json_values, event=st.none() | tricky_text, id_=st.none() | tricky_text)
def test_encode_json_frames_match_the_event_path_or_raise_the_same_error(
    data: object, event: str | None, id_: str | None
) -> None:
    """`encode` with non-text data takes a shortcut; it must check and frame exactly like the
    general path (`StreamEvent` validation + `encode_stream_event`)."""
    if data is None or isinstance(data, str):
        return  # not the JSON shortcut: covered by the text round trip
    bad = (event is not None and _forbidden(event, is_event=True)) or (
        id_ is not None and _forbidden(id_, is_event=False)
    )
    if bad:
        with pytest.raises(InvalidFieldError):
            encode(data=data, event=event, id=id_)
        return
    frame = encode(data=data, event=event, id=id_)
    if event is not None:
        assert frame == encode_stream_event(StreamEvent(event, data, id_))  # type: ignore[arg-type]
    [parsed] = parse(frame)
    assert isinstance(parsed, SSEEvent)
    assert (parsed.event, parsed.id) == (event, id_)
    assert orjson.loads(parsed.data) == data
