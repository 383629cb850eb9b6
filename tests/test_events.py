"""`StreamEvent` byte form and `Cursor` parsing."""

from __future__ import annotations

import dataclasses
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streaming_mw import InvalidEventError, StreamEvent, encode_stream_event
from streaming_mw._types import check_sse_field
from streaming_mw.errors import EventTooLargeError, InvalidCursorError, InvalidFieldError
from streaming_mw.events import TERMINAL_EVENT_TYPES, Cursor, EventType, new_epoch


def test_round_trip_through_bytes() -> None:
    event = StreamEvent("log", {"message": "hé\n", "level": "info"}, "ab12-7", "s1", 1700.5)
    assert StreamEvent.from_bytes(event.to_bytes()) == event


def test_bytes_are_compact_and_omit_empty_fields() -> None:
    assert StreamEvent("ping", timestamp=1.0).to_bytes() == b'{"t":"ping","ts":1.0}'


def test_with_id_keeps_everything_else() -> None:
    event = StreamEvent("progress", {"percent": 10}, stream_id="s", timestamp=3.0)
    assert event.with_id("e-1") == StreamEvent("progress", {"percent": 10}, "e-1", "s", 3.0)


def test_from_bytes_with_an_event_id_equals_with_id_and_checks_it() -> None:
    stored = StreamEvent("log", {"message": "x"}, "old-1", "s", 5.0).to_bytes()
    assert StreamEvent.from_bytes(stored, event_id="e-9") == StreamEvent(
        "log", {"message": "x"}, "e-9", "s", 5.0
    )
    assert StreamEvent.from_bytes(stored, event_id="e-9") == StreamEvent.from_bytes(stored).with_id(
        "e-9"
    )
    with pytest.raises(InvalidFieldError):
        StreamEvent.from_bytes(stored, event_id="e-9\nevent: forged")


def test_terminal_types() -> None:
    assert StreamEvent(EventType.COMPLETE).is_terminal
    assert StreamEvent("error").is_terminal
    assert not StreamEvent("log").is_terminal
    assert frozenset({"complete", "error"}) == TERMINAL_EVENT_TYPES


FIELD_CHARS = ["a", " ", ":", "\r", "\n", "\0", "\x85", "\u2028", "é", "\ud800"]
FIELD_TEXT = st.text(st.sampled_from(FIELD_CHARS))


def _accepted(field: str, value: str) -> bool:
    try:
        check_sse_field(field, value)
    except InvalidFieldError:
        return False
    return True


@given(kind=FIELD_TEXT, event_id=st.none() | FIELD_TEXT)
def test_construction_accepts_exactly_what_the_field_check_accepts(
    kind: str, event_id: str | None
) -> None:
    """The constructor's one-scan shortcut refuses and admits the same values as the check."""
    ok = _accepted("event", kind) and (event_id is None or _accepted("id", event_id))
    if not ok:
        with pytest.raises(InvalidFieldError):
            StreamEvent(kind, None, event_id)
        return
    event = StreamEvent(kind, None, event_id)
    assert (event.type, event.id) == (kind, event_id)


def test_lone_surrogate_in_the_type_fails_when_framed_not_silently() -> None:
    with pytest.raises(InvalidEventError, match="Unicode"):
        encode_stream_event(StreamEvent("tok\ud800en", {"x": 1}, "1"))


def test_timestamp_defaults_to_now_and_replace_keeps_the_checks() -> None:
    before = time.time()
    event = StreamEvent("log", {"n": 1}, stream_id="s")
    assert before <= event.timestamp <= time.time()
    assert StreamEvent("log", timestamp=0.0).timestamp == 0.0
    copy = dataclasses.replace(event, id="e-2")
    assert copy == StreamEvent("log", {"n": 1}, "e-2", "s", event.timestamp)
    with pytest.raises(InvalidFieldError):
        dataclasses.replace(event, id="e-2\ndata: forged")
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.type = "other"  # type: ignore[misc]


@pytest.mark.parametrize(("kind", "event_id"), [("a\nb", None), ("", None), ("log", "1\r")])
def test_fields_are_checked_at_construction(kind: str, event_id: str | None) -> None:
    with pytest.raises(InvalidFieldError):
        StreamEvent(kind, None, event_id)


def test_oversized_event_is_refused_with_sizes() -> None:
    event = StreamEvent("log", {"message": "x" * 100})
    with pytest.raises(EventTooLargeError) as info:
        event.to_bytes(max_bytes=50)
    assert info.value.limit == 50
    assert info.value.size == len(event.to_bytes())


def test_non_json_data_is_refused() -> None:
    with pytest.raises(InvalidEventError, match="JSON"):
        StreamEvent("log", {"x": {1, 2}}).to_bytes()  # type: ignore[dict-item]


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b"[]",
        b'{"d":1}',
        b'{"t":1}',
        b'{"t":"x","ts":"now"}',
        b'{"t":"x","i":5}',
        b'{"t":"x","s":[]}',
        b'{"t":"a\\nb"}',
    ],
)
def test_malformed_bytes_raise_invalid_event(raw: bytes) -> None:
    with pytest.raises(InvalidEventError):
        StreamEvent.from_bytes(raw)


def test_cursor_parse_and_format() -> None:
    cursor = Cursor.parse("a1b2c3-42")
    assert cursor == Cursor("a1b2c3", 42)
    assert str(cursor) == "a1b2c3-42"
    assert Cursor("e", 1) < Cursor("e", 2)


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "abc",
        "abc-",
        "-1",
        "abc-01",
        "ABC-1",
        "ab c-1",
        "abc-1-2",
        "abc-+1",
        "abc--1",
        "abc-1000000000000000000",
        "x" * 33 + "-1",
        "abc-1\u0661",
    ],
)
def test_malformed_cursor_is_refused_with_a_clear_error(raw: str) -> None:
    with pytest.raises(InvalidCursorError, match="epoch"):
        Cursor.parse(raw)


def test_cursor_constructor_validates() -> None:
    with pytest.raises(InvalidCursorError):
        Cursor("e", -1)
    with pytest.raises(InvalidCursorError):
        Cursor("E", 1)


def test_new_epochs_are_random_and_valid() -> None:
    epochs = {new_epoch() for _ in range(100)}
    assert len(epochs) == 100
    for epoch in epochs:
        assert Cursor.parse(f"{epoch}-0").epoch == epoch
