"""Settings from the environment and the seed's option objects."""

from __future__ import annotations

import math

import pytest

from streaming_mw import ChannelConfig, ConfigurationError, QueueRedisConfig, StreamLeaseConfig
from streaming_mw.config import StreamingSettings, load_settings

ENV_VARS = [
    "REDIS_URL",
    "STREAMING_MODE",
    "OPENSEARCH_HOST",
    "OPENSEARCH_PORT",
    "OPENSEARCH_USE_SSL",
    "OPENSEARCH_AUTH_TYPE",
    "OPENSEARCH_USERNAME",
    "OPENSEARCH_PASSWORD",
]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)


def test_seed_defaults() -> None:
    # The seed's field names keep working; the default TTL returns a dead process's slots
    # within 30 s (issue 16: within 60 s).
    config = StreamLeaseConfig(limit=5, ttl_seconds=30, key_namespace="stream_leases")
    assert StreamLeaseConfig() == config
    assert (config.global_limit, config.wait_seconds, config.on_lease_lost) == (None, 0, "end")
    channel = ChannelConfig()
    assert (channel.key_prefix, channel.subscribe_timeout) == ("stream:", 1.0)
    assert (channel.ping_interval, channel.max_idle_time) == (15.0, 300.0)
    assert channel.history_size > 0
    assert channel.history_ttl_seconds > 0


def test_settings_defaults_without_environment() -> None:
    settings = load_settings()
    assert settings.redis_url is None
    assert settings.streaming_mode == "auto"
    assert settings.opensearch_host is None
    assert settings.opensearch_port == 9200
    assert settings.opensearch_use_ssl is False
    assert settings.opensearch_auth_type == "none"


def test_settings_read_the_seed_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://localhost:6379/0")
    monkeypatch.setenv("STREAMING_MODE", "redis")
    monkeypatch.setenv("OPENSEARCH_HOST", "search.internal")
    monkeypatch.setenv("OPENSEARCH_PORT", "9201")
    monkeypatch.setenv("OPENSEARCH_USE_SSL", "true")
    monkeypatch.setenv("OPENSEARCH_AUTH_TYPE", "basic")
    monkeypatch.setenv("OPENSEARCH_PASSWORD", "s3cret")
    settings = load_settings()
    assert settings.redis_url == "redis://localhost:6379/0"
    assert settings.streaming_mode == "redis"
    assert (settings.opensearch_host, settings.opensearch_port) == ("search.internal", 9201)
    assert settings.opensearch_use_ssl is True
    assert settings.opensearch_auth_type == "basic"
    assert settings.opensearch_password is not None
    assert "s3cret" not in repr(settings)


def test_empty_redis_url_means_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "")
    assert load_settings().redis_url is None


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("REDIS_URL", "localhost:6379"),
        ("STREAMING_MODE", "cluster"),
        ("OPENSEARCH_PORT", "0"),
        ("OPENSEARCH_PORT", "http"),
        ("OPENSEARCH_AUTH_TYPE", "kerberos"),
        ("OPENSEARCH_USE_SSL", "maybe"),
    ],
)
def test_bad_environment_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError, match=name):
        load_settings()


def test_settings_are_immutable() -> None:
    settings = StreamingSettings()
    with pytest.raises(ValueError, match="frozen"):
        settings.streaming_mode = "memory"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("factory", "field"),
    [
        (lambda: StreamLeaseConfig(limit=0), "StreamLeaseConfig.limit"),
        (lambda: StreamLeaseConfig(limit=True), "StreamLeaseConfig.limit"),
        (lambda: StreamLeaseConfig(limit=2.5), "StreamLeaseConfig.limit"),  # type: ignore[arg-type]
        (lambda: StreamLeaseConfig(ttl_seconds=0), "StreamLeaseConfig.ttl_seconds"),
        (lambda: StreamLeaseConfig(ttl_seconds=float("inf")), "StreamLeaseConfig.ttl_seconds"),
        (lambda: StreamLeaseConfig(key_namespace="a{b}"), "StreamLeaseConfig.key_namespace"),
        (lambda: StreamLeaseConfig(key_namespace=""), "StreamLeaseConfig.key_namespace"),
        (lambda: StreamLeaseConfig(global_limit=0), "StreamLeaseConfig.global_limit"),
        (lambda: StreamLeaseConfig(wait_seconds=-1), "StreamLeaseConfig.wait_seconds"),
        (lambda: StreamLeaseConfig(wait_seconds=math.nan), "StreamLeaseConfig.wait_seconds"),
        (
            lambda: StreamLeaseConfig(on_lease_lost="drop"),  # type: ignore[arg-type]
            "StreamLeaseConfig.on_lease_lost",
        ),
        (lambda: ChannelConfig(key_prefix="has space"), "ChannelConfig.key_prefix"),
        (lambda: ChannelConfig(subscribe_timeout=-1), "ChannelConfig.subscribe_timeout"),
        (lambda: ChannelConfig(ping_interval=float("nan")), "ChannelConfig.ping_interval"),
        (lambda: ChannelConfig(max_idle_time=0), "ChannelConfig.max_idle_time"),
        (lambda: ChannelConfig(history_size=0), "ChannelConfig.history_size"),
        (lambda: ChannelConfig(history_ttl_seconds=-5), "ChannelConfig.history_ttl_seconds"),
        (lambda: QueueRedisConfig(url="http://localhost"), "QueueRedisConfig.url"),
        (lambda: QueueRedisConfig(url="redis://x", socket_timeout=0), "socket_timeout"),
        (lambda: QueueRedisConfig(url="redis://x", connect_timeout="1"), "connect_timeout"),  # type: ignore[arg-type]
    ],
)
def test_invalid_options_fail_at_construction_naming_the_field(factory: object, field: str) -> None:
    with pytest.raises(ConfigurationError, match=field.replace(".", r"\.")):
        factory()  # type: ignore[operator]


def test_option_objects_are_frozen_value_objects() -> None:
    config = StreamLeaseConfig(limit=2)
    with pytest.raises(AttributeError):
        config.limit = 3  # type: ignore[misc]
    assert config == StreamLeaseConfig(limit=2)
    assert not hasattr(config, "__dict__")


@pytest.mark.parametrize("url", ["redis://h:1/0", "rediss://u:p@h:6380/2", "unix:///tmp/r.sock"])
def test_redis_urls_accepted(url: str) -> None:
    assert QueueRedisConfig(url).url == url
