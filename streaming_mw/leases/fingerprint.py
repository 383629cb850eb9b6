"""Every process sharing a Redis should enforce the same limits: `LeaseConfigBeacon` records this
process's lease configuration (`StreamLeaseConfig.fingerprint`) in Redis at startup, and names
any other configuration recorded there by a live process.

The record is one hash, ``<key_namespace>:config``: field = a fingerprint, value = when a
process last announced it (ms, Redis ``TIME``). Each process announces its own every
``ttl_seconds / 3``; an entry not announced for ``ttl_seconds`` (at least 10 s) belongs to no
live process and is dropped. One key, one script: one slot on a cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from .._redis import unavailable_as_backend_error
from .._tasks import detached
from ..errors import BackendUnavailableError, ConfigurationError

if TYPE_CHECKING:
    from .._redis import AsyncRedis
    from ..config import StreamLeaseConfig

__all__ = ["ANNOUNCE", "LeaseConfigBeacon"]

log = logging.getLogger("streaming_mw.leases")

# KEYS[1] = config hash; ARGV = fingerprint, stale after ms, '1' = do not record on a mismatch
# -> the other live fingerprints
ANNOUNCE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local stale = tonumber(ARGV[2])
local all = redis.call('HGETALL', KEYS[1])
local others = {}
for i = 1, #all, 2 do
  if now - tonumber(all[i + 1]) > stale then
    redis.call('HDEL', KEYS[1], all[i])
  elseif all[i] ~= ARGV[1] then
    table.insert(others, all[i])
  end
end
if #others > 0 and ARGV[3] == '1' then return others end
redis.call('HSET', KEYS[1], ARGV[1], now)
redis.call('PEXPIRE', KEYS[1], stale)
return others
"""


class LeaseConfigBeacon:
    """Announces this process's lease configuration while the container runs."""

    def __init__(self, client: AsyncRedis, config: StreamLeaseConfig) -> None:
        self.config = config
        self.key = f"{config.key_namespace}:config"
        self._announce = client.register_script(ANNOUNCE)
        self._stale_ms = round(max(config.ttl_seconds, 10.0) * 1000)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> list[str]:
        """Announce the configuration; log one error naming both if another live process runs
        a different one (``strict``: raise `ConfigurationError` instead, recording nothing).
        Returns the other configurations seen."""
        strict = self.config.strict
        mine = self.config.fingerprint()
        try:
            others = await self._send(record_on_mismatch=not strict)
        except Exception as exc:  # unreachable, or a proxy refusing scripts: not fatal
            log.warning("could not check the lease configuration against Redis: %r", exc)
            others = []
        if others:
            message = (
                f"STREAMING CONFIG MISMATCH: this process's lease configuration ({mine}) differs "
                f"from another process's on the same Redis ({'; '.join(others)}); "
                "limits are enforced inconsistently until every process runs the same one"
            )
            if strict:
                raise ConfigurationError(message)
            log.error("%s", message)
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name="streaming_mw.lease_config_beacon", context=detached()
        )
        return others

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.config.ttl_seconds / 3)
            try:
                await self._send(record_on_mismatch=True)
            except BackendUnavailableError:
                pass  # announced again next time
            except Exception:
                log.exception("could not announce the lease configuration")

    async def _send(self, *, record_on_mismatch: bool) -> list[str]:
        fingerprint = self.config.fingerprint()
        with unavailable_as_backend_error("lease configuration check"):
            async with asyncio.timeout(5.0):
                answer = await self._announce(
                    keys=[self.key],
                    args=[fingerprint, self._stale_ms, "0" if record_on_mismatch else "1"],
                )
        return [item.decode() if isinstance(item, bytes) else str(item) for item in answer]
