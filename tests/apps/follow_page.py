"""A page that follows one stream with the browser's native ``EventSource``, for the browser
tests: ``GET /page?stream=<id>`` lists every event it receives (``#events``), the
``EventSource``'s ``readyState`` (``#ready``) and how often it opened (``#opens``); it never
closes or recreates the ``EventSource``. ``GET /streams/{id}`` follows the stream and prints
the ``Last-Event-ID`` each request brings.

Run as ``uvicorn tests.apps.follow_page:app`` with ``REDIS_URL`` and ``STREAMING_MODE=redis``.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response

from streaming_mw import StreamingMiddleware, stream_response

__all__ = ["app"]

app = FastAPI()
app.add_middleware(StreamingMiddleware)

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>follow</title><link rel="icon" href="data:,"></head>
<body>
<p>readyState <span id="ready">0</span>, opened <span id="opens">0</span> times</p>
<ol id="events"></ol>
<script>
  const stream = new URLSearchParams(location.search).get("stream");
  const source = new EventSource(`/streams/${stream}`);
  let opens = 0;
  source.onopen = () => { document.getElementById("opens").textContent = ++opens; };
  for (const type of ["log", "complete", "error", "reset"]) {
    source.addEventListener(type, (e) => {
      if (type === "error" && !e.data) return;  // a connection error: it retries by itself
      const item = document.createElement("li");
      item.textContent = `${e.lastEventId} ${type} ${e.data}`;
      document.getElementById("events").appendChild(item);
    });
  }
  setInterval(() => { document.getElementById("ready").textContent = source.readyState; }, 50);
</script>
</body></html>
"""


@app.get("/page")
async def page() -> HTMLResponse:
    return HTMLResponse(PAGE)


@app.get("/streams/{stream_id}")
async def follow(stream_id: str, request: Request) -> Response:
    print(f"follow {stream_id} last-event-id={request.headers.get('last-event-id')}", flush=True)
    return stream_response(stream_id, request)
