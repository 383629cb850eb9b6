"""The curated public API: `__all__` is pinned here, so a change to it is a deliberate diff."""

from __future__ import annotations

import importlib
import types

import pytest

import streaming_mw
import streaming_mw.errors as errors_module

PUBLIC_API = [
    "SSE_HEADERS",
    "BackendUnavailableError",
    "ChannelConfig",
    "ConfigurationError",
    "DeploymentEmitter",
    "EventStreamResponse",
    "InvalidEventError",
    "JobHandle",
    "JobState",
    "JobStatus",
    "Lease",
    "LeaseLost",
    "QueueConfig",
    "QueueRedisConfig",
    "QueueWorker",
    "SSEEmitter",
    "StorageConfig",
    "StreamClosedError",
    "StreamContext",
    "StreamEvent",
    "StreamLeaseConfig",
    "StreamLimitExceeded",
    "StreamNotFoundError",
    "StreamingError",
    "StreamingMiddleware",
    "add_exception_handlers",
    "cancel",
    "cancel_stream",
    "encode_stream_event",
    "enqueue",
    "get_emitter",
    "init_jobs",
    "init_streaming",
    "init_telemetry",
    "job_status",
    "lease_dependency",
    "resumable_response",
    "sse_response",
    "stream_lease",
    "stream_response",
    "streaming_identity",
]


def public_names() -> set[str]:
    return {
        name
        for name, value in vars(streaming_mw).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and name not in ("annotations", "Any", "import_module", "warnings")
    }


def test_the_public_api_is_pinned() -> None:
    assert streaming_mw.__all__ == PUBLIC_API
    assert len(PUBLIC_API) <= 45


def test_all_matches_the_public_names() -> None:
    assert set(streaming_mw.__all__) == public_names()


def test_the_public_api_is_documented_in_one_place() -> None:
    from pathlib import Path

    page = (Path(__file__).parents[1] / "docs" / "api.md").read_text()
    missing = [name for name in PUBLIC_API if f"`{name}`" not in page]
    assert missing == []


@pytest.mark.parametrize("name", sorted(streaming_mw._MOVED))
def test_a_moved_name_still_works_with_a_deprecation_warning(name: str) -> None:
    home = importlib.import_module(streaming_mw._MOVED[name])
    with pytest.warns(DeprecationWarning, match=f"import it from {home.__name__}"):
        value = getattr(streaming_mw, name)
    assert value is getattr(home, name)
    assert name in home.__all__
    assert name not in streaming_mw.__all__


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = streaming_mw.no_such_name


def test_every_error_derives_from_the_root_and_is_drawn() -> None:
    for name in errors_module.__all__:
        error = getattr(errors_module, name)
        assert issubclass(error, streaming_mw.StreamingError)
        assert name in (errors_module.__doc__ or ""), f"{name} missing from the drawn tree"


def test_package_is_typed() -> None:
    from importlib.resources import files

    assert files("streaming_mw").joinpath("py.typed").is_file()
