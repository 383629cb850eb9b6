"""The pytest plugin (entry point ``streaming_mw``): fixtures for testing streaming routes.

Define a ``streaming_app`` fixture that returns your application, then use

- ``streaming_client``: an ``httpx.AsyncClient`` calling the app in memory, its lifespan run,
  in memory mode (`streaming_mw.testing.streaming_client`); needs pytest-asyncio;
- ``streaming_server``: the base URL of the app served by uvicorn in a thread
  (`streaming_mw.testing.serve_in_thread`), for endless streams; needs uvicorn.

The plugin is loaded wherever streaming-mw is installed; it imports httpx, asgi-lifespan and
uvicorn only when a fixture is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    import httpx

__all__ = ["streaming_app", "streaming_client", "streaming_server"]


@pytest.fixture
def streaming_app() -> Any:
    """Override this fixture: return the ASGI app under test."""
    pytest.fail("define a `streaming_app` fixture that returns your app")


@pytest.fixture
def streaming_server(streaming_app: Any) -> Iterator[str]:
    """Base URL of ``streaming_app`` served by uvicorn in a thread."""
    from .server import serve_in_thread

    with serve_in_thread(streaming_app) as base_url:
        yield base_url


try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - no async fixture without pytest-asyncio
    pass
else:

    @pytest_asyncio.fixture
    async def streaming_client(streaming_app: Any) -> AsyncIterator[httpx.AsyncClient]:
        """An ``httpx.AsyncClient`` for ``streaming_app``, lifespan run, memory mode."""
        from .app import streaming_client as client_for

        async with client_for(streaming_app) as client:
            yield client
