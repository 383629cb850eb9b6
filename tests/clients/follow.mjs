// Follow one stream with the npm `eventsource` package, as a page would: never closed or
// recreated by this code. Prints one JSON line when the EventSource gave up for good
// (readyState CLOSED) or after the time limit:
//   {"events": [{type, id, data}], "requests": [{status, lastEventId}], "readyState": n}
//
//   node follow.mjs <url> <seconds>
import { EventSource } from "eventsource";

const [url, seconds] = process.argv.slice(2);
const requests = [];
const events = [];

async function countingFetch(input, init) {
  const headers = new Headers(init?.headers ?? {});
  const entry = { status: null, lastEventId: headers.get("last-event-id") };
  requests.push(entry);
  try {
    const response = await fetch(input, init);
    entry.status = response.status;
    return response;
  } catch (error) {
    entry.status = `failed: ${error.cause?.code ?? error.message}`;
    throw error;
  }
}

const source = new EventSource(url, { fetch: countingFetch });
const record = (type) => (event) => {
  if (type === "error" && event.data === undefined) return; // a connection error, not an event
  events.push({ type, id: event.lastEventId, data: JSON.parse(event.data) });
};
for (const type of ["log", "progress", "complete", "error", "reset", "message"]) {
  source.addEventListener(type, record(type));
}

function finish() {
  const readyState = source.readyState;
  source.close();
  console.log(JSON.stringify({ events, requests, readyState }));
  process.exit(0);
}
const deadline = Date.now() + Number(seconds) * 1000;
const timer = setInterval(() => {
  if (source.readyState === EventSource.CLOSED || Date.now() > deadline) {
    clearInterval(timer);
    finish();
  }
}, 50);
