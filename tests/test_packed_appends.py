"""`PackedAppender`: a synchronous client's marked appends, packed and sent on a held
connection, with the same answers as redis-py's path and the same care when a connection or the
server's scripts are lost. Real redis-server throughout."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import pytest
import redis

from streaming_mw._redis import make_sync_client
from streaming_mw.channels.base import ProducerMark, StreamState
from streaming_mw.channels.packed import PackedAppender
from streaming_mw.channels.redis import APPEND, SyncRedisChannel
from streaming_mw.config import ChannelConfig, QueueRedisConfig
from streaming_mw.errors import (
    BackendUnavailableError,
    ConfigurationError,
    StreamClosedError,
    StreamNotFoundError,
)
from streaming_mw.events import StreamEvent

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.helpers.redis_server import RedisServer

pytestmark = pytest.mark.redis


def event(n: int) -> bytes:
    return StreamEvent("log", {"n": n}, timestamp=1.0).to_bytes()


def history(client: redis.Redis, channel: SyncRedisChannel, stream_id: str) -> list[bytes]:
    entries: Any = client.xrange(channel.keys(stream_id).events)
    return [fields[b"e"] for _, fields in entries]


def sync_client(url: str) -> redis.Redis:
    client = make_sync_client(QueueRedisConfig(url=url), cluster=False)
    assert isinstance(client, redis.Redis)
    return client


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    """The synchronous client worker threads get (`make_sync_client`), on an empty database."""
    client = sync_client(redis_url)
    client.flushall()
    yield client
    client.close()


def one_appended(client: redis.Redis) -> SyncRedisChannel:
    """A channel on ``client`` whose stream ``job`` has event 1, appended the packed way."""
    channel = SyncRedisChannel(client, ChannelConfig())
    channel.create("job")
    assert channel.append("job", event(1), producer=ProducerMark("p", 1)) == 1
    return channel


def packed(channel: SyncRedisChannel) -> PackedAppender:
    appender = channel._packed
    assert appender is not None, "a one-node client with a pool gets the packed path"
    return appender


def test_a_marked_append_goes_packed_on_one_held_connection(client: redis.Redis) -> None:
    channel = one_appended(client)
    for n in range(2, 6):
        assert channel.append("job", event(n), producer=ProducerMark("p", n)) == n
    appender = packed(channel)
    assert appender._held == 1  # one connection, held between appends, not one each
    assert len(appender._idle) == 1
    assert history(client, channel, "job") == [event(n) for n in range(1, 6)]
    assert client.hget(channel.keys("job").meta, "seq") == b"5"
    channel.close()


def test_packed_answers_are_redis_pys(client: redis.Redis) -> None:
    """Every answer of the script means the same on both paths: a repeat of a mark returns its
    seq and adds nothing, an older mark is refused, a missing or ended stream raises."""
    channel = SyncRedisChannel(client, ChannelConfig())
    channel.create("job")
    assert channel.append("job", event(1), producer=ProducerMark("p", 1)) == 1
    assert channel.append("job", event(1), producer=ProducerMark("p", 1)) == 1  # a retry
    assert history(client, channel, "job") == [event(1)]
    assert channel.append("job", event(2), producer=ProducerMark("p", 3)) == 2
    with pytest.raises(ConfigurationError, match="out of order"):
        channel.append("job", event(9), producer=ProducerMark("p", 2))
    with pytest.raises(StreamNotFoundError):
        channel.append("nothing", event(1), producer=ProducerMark("p", 1))
    done = StreamEvent("complete", {}).to_bytes()
    assert channel.append("job", done, final_state=StreamState.DONE, producer=ProducerMark("p", 4))
    with pytest.raises(StreamClosedError):
        channel.append("job", event(5), producer=ProducerMark("p", 5))
    assert packed(channel)._held == 1  # answered errors leave the connection usable
    assert len(history(client, channel, "job")) == 3
    channel.close()


def test_an_unmarked_append_keeps_redis_pys_path(client: redis.Redis) -> None:
    """Without a mark, sending again could add the event twice: no held connection for it."""
    channel = SyncRedisChannel(client, ChannelConfig())
    channel.create("job")
    assert channel.append("job", event(1)) == 1
    assert packed(channel)._held == 0
    channel.close()


def test_scripts_flushed_are_loaded_again(client: redis.Redis) -> None:
    channel = one_appended(client)
    client.script_flush()
    assert channel.append("job", event(2), producer=ProducerMark("p", 2)) == 2
    assert history(client, channel, "job") == [event(1), event(2)]
    channel.close()


def test_a_killed_connection_is_replaced_and_the_append_lands_once(client: redis.Redis) -> None:
    channel = one_appended(client)
    held = packed(channel)._idle[0]
    host, port = held._sock.getsockname()[:2]
    assert client.client_kill_filter(addr=f"{host}:{port}", skipme=True) == 1
    assert channel.append("job", event(2), producer=ProducerMark("p", 2)) == 2
    assert history(client, channel, "job") == [event(1), event(2)]
    channel.close()


def test_a_lost_server_is_a_connection_error_and_then_a_fresh_start(
    own_redis: RedisServer,
) -> None:
    """The server restarts: the held connection and the loaded script are both gone. The append
    made while it is down fails as redis-py's would; the next one reconnects and loads the
    script again."""
    client = sync_client(own_redis.url)
    channel = one_appended(client)
    own_redis.stop()
    with pytest.raises(BackendUnavailableError):
        channel.append("job", event(2), producer=ProducerMark("p", 2))
    own_redis.start()
    assert channel.append("job", event(2), producer=ProducerMark("p", 2)) == 2
    assert history(client, channel, "job") == [event(1), event(2)]
    channel.close()


def test_held_connections_are_bounded_and_given_back(client: redis.Redis) -> None:
    appender = PackedAppender(client, APPEND, client.register_script(APPEND).sha, limit=1)
    first = appender._take()
    assert first is not None
    assert appender._take() is None  # all held and busy: the caller takes redis-py's path
    appender._give(first)
    assert appender._take() is first
    appender._give(first)
    appender.close()
    pool = client.connection_pool
    again = pool.get_connection()
    assert again is first  # back in the pool (its last in, first out)
    pool.release(again)
    assert appender._take() is None  # closed: nothing held again


def test_threads_append_in_parallel_each_event_once(client: redis.Redis) -> None:
    channel = SyncRedisChannel(client, ChannelConfig())
    for t in range(8):
        channel.create(f"job-{t}")

    def produce(t: int) -> None:
        for n in range(1, 51):
            channel.append(f"job-{t}", event(n), producer=ProducerMark(f"p{t}", n))

    threads = [threading.Thread(target=produce, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    for t in range(8):
        assert history(client, channel, f"job-{t}") == [event(n) for n in range(1, 51)]
    assert 1 <= packed(channel)._held <= packed(channel)._limit
    channel.close()


def test_a_restart_between_appends_costs_one_more_send(own_redis: RedisServer) -> None:
    """The server restarts while the kept connection is idle: the next append finds it dead,
    reconnects, finds the script gone, loads it, and lands once."""
    client = sync_client(own_redis.url)
    channel = one_appended(client)
    own_redis.restart()
    assert channel.append("job", event(2), producer=ProducerMark("p", 2)) == 2
    assert channel.append("job", event(2), producer=ProducerMark("p", 2)) == 2  # a repeat
    assert history(client, channel, "job") == [event(1), event(2)]
    assert packed(channel)._held == 1
    channel.close()
