"""``RedisEventBuffer``: a shared adapter on Redis with a TTL dedupe window.

Every operation that touches more than one key is one Lua script, so it is
atomic on the server: no check-then-set, no unchecked pipeline. Times come
from the server's ``TIME`` inside the scripts, so every bot instance sharing
the namespace agrees on them whatever its own clock says.

Keys, under ``{namespace}:``

``env:{envelope_id}``
    A hash (``text``: the exact JSON text, ``event_id``, ``recorded_at``: server
    time in ms), expiring after the TTL. Its existence is ``seen``.
``evt:{event_id}``
    The envelope id that first carried this ``payload.event_id``, expiring
    after the TTL; a retry in a new envelope finds it and is ``DUPLICATE``.
``pending``
    A sorted set of envelope ids not yet completed, scored by server time in
    microseconds. Ids whose envelope expired are dropped by ``pending`` and,
    a few at a time, by ``record``, so it stays bounded under a steady stream;
    the set itself expires a TTL after the last ``record``.
``clock``
    The last score handed out, so that envelopes recorded within one
    microsecond still list in recording order.

On Redis Cluster, put the namespace in braces (``namespace="{recorder}"``) so
that every key hashes to one slot, as the scripts need.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import TYPE_CHECKING, Any

from recorder.adapter import EnvelopeInput, RecordResult
from recorder.envelope import ParsedEnvelope, decode_stored, parse_envelope, validate_envelope_id
from recorder.errors import ConfigurationError, MissingDependency, StorageUnavailable
from recorder.redaction import DEFAULT_REDACTION, Redaction
from recorder.settings import max_envelope_bytes_from_env, resolve_redaction

if TYPE_CHECKING:
    from redis import Redis

__all__ = ["RedisEventBuffer"]

DEFAULT_SOCKET_CONNECT_TIMEOUT_SECONDS = 2.0
DEFAULT_SOCKET_TIMEOUT_SECONDS = 5.0

# KEYS: pending zset, clock, envelope key[, event key]
# ARGV: envelope id, text, event id or "", TTL in ms, envelope key prefix
# Returns 1 for NEW, 0 for DUPLICATE.
_RECORD = """
local ttl_ms = tonumber(ARGV[4])
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])

-- Forget a few ids whose envelope expired before they were completed.
local cutoff = string.format('%.0f', now_us - ttl_ms * 1000)
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', cutoff, 'LIMIT', 0, 8)) do
  if redis.call('EXISTS', ARGV[5] .. id) == 0 then
    redis.call('ZREM', KEYS[1], id)
  end
end

if redis.call('EXISTS', KEYS[3]) == 1 then
  return 0
end
if KEYS[4] and not redis.call('SET', KEYS[4], ARGV[1], 'NX', 'PX', ttl_ms) then
  -- Taken by another envelope: a retry. Taken by this very id, its envelope
  -- key expired a moment earlier than the event key: record it again.
  if redis.call('GET', KEYS[4]) ~= ARGV[1] then
    return 0
  end
  redis.call('SET', KEYS[4], ARGV[1], 'PX', ttl_ms)
end

local score = now_us
local last = tonumber(redis.call('GET', KEYS[2]) or '0')
if score <= last then
  score = last + 1
end
score = string.format('%.0f', score)
redis.call('SET', KEYS[2], score, 'PX', ttl_ms)
redis.call('HSET', KEYS[3], 'text', ARGV[2], 'event_id', ARGV[3],
           'recorded_at', string.format('%.0f', math.floor(now_us / 1000)))
redis.call('PEXPIRE', KEYS[3], ttl_ms)
redis.call('ZADD', KEYS[1], score, ARGV[1])
-- Everything in the set expires within a TTL from now, so the set may too:
-- an abandoned namespace leaves nothing behind.
if redis.call('PTTL', KEYS[1]) < ttl_ms then
  redis.call('PEXPIRE', KEYS[1], ttl_ms)
end
return 1
"""

# KEYS: pending zset, envelope key
# ARGV: envelope id, event key prefix
_DELETE = """
local event_id = redis.call('HGET', KEYS[2], 'event_id')
if event_id and event_id ~= '' then
  local event_key = ARGV[2] .. event_id
  if redis.call('GET', event_key) == ARGV[1] then
    redis.call('DEL', event_key)
  end
end
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[1], ARGV[1])
return 1
"""

# KEYS: pending zset
# ARGV: limit (negative: no limit), envelope key prefix
# Returns the stored texts, oldest first; drops ids whose envelope expired.
_PENDING = """
local limit = tonumber(ARGV[1])
local out = {}
local start = 0
local batch = 200
while limit < 0 or #out < limit do
  local ids = redis.call('ZRANGE', KEYS[1], start, start + batch - 1)
  if #ids == 0 then
    break
  end
  local removed = 0
  for _, id in ipairs(ids) do
    local text = redis.call('HGET', ARGV[2] .. id, 'text')
    if text then
      if limit < 0 or #out < limit then
        out[#out + 1] = text
      end
    else
      redis.call('ZREM', KEYS[1], id)
      removed = removed + 1
    end
  end
  start = start + batch - removed
end
return out
"""


def _import_redis() -> ModuleType:
    try:
        return importlib.import_module("redis")
    except ImportError as exc:
        raise MissingDependency("redis", "redis") from exc


class RedisEventBuffer:
    """Records envelopes in Redis, shared by every bot instance using the same namespace.

    Parameters
    ----------
    url
        ``redis://host:6379/0`` (or ``rediss://``, ``unix://``). Ignored when
        ``client`` is given.
    namespace
        Prefix of every key; instances sharing it share one dedupe window.
    ttl_seconds
        The dedupe window, in seconds (positive; millisecond resolution).
    max_envelope_bytes
        Larger envelopes are :class:`~recorder.errors.InvalidEnvelope`. Defaults
        to ``RECORDER_MAX_ENVELOPE_BYTES`` or 1 MiB.
    redaction
        JSON paths masked or dropped in the stored copy
        (:class:`~recorder.redaction.Redaction`). By default ``payload.token``
        and the response URLs are masked, or what ``RECORDER_REDACT`` says;
        ``None`` or ``Redaction.none()`` stores envelopes as received. The
        caller's envelope is never modified.
    client
        A ``redis.Redis`` client to use instead of one built from ``url``; it
        stays the caller's (:meth:`close` leaves it open). Give it socket
        timeouts, and no retries: a retried ``record`` that had in fact run
        would report ``DUPLICATE`` for an envelope nobody handled.
    socket_timeout, socket_connect_timeout
        Seconds before a dead or unreachable server fails the call with
        :class:`~recorder.errors.StorageUnavailable`.

    Raises
    ------
    MissingDependency
        The ``redis`` package is not installed (``pip install 'envelope-recorder[redis]'``).
    ConfigurationError
        A bad ``url``, ``namespace`` or ``ttl_seconds``.
    """

    def __init__(
        self,
        url: str | None = None,
        namespace: str = "recorder",
        ttl_seconds: float = 300,
        *,
        max_envelope_bytes: int | None = None,
        redaction: Redaction | None = DEFAULT_REDACTION,
        client: Redis[Any] | None = None,
        socket_timeout: float = DEFAULT_SOCKET_TIMEOUT_SECONDS,
        socket_connect_timeout: float = DEFAULT_SOCKET_CONNECT_TIMEOUT_SECONDS,
    ) -> None:
        redis = _import_redis()
        if not isinstance(namespace, str) or not namespace:
            raise ConfigurationError(f"namespace must be a non-empty string, not {namespace!r}")
        if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int | float):
            raise ConfigurationError(f"ttl_seconds must be a number, not {ttl_seconds!r}")
        if not ttl_seconds > 0:
            raise ConfigurationError(f"ttl_seconds must be positive, not {ttl_seconds!r}")
        self._error: type[Exception] = redis.RedisError
        self.namespace = namespace
        self.ttl_seconds = float(ttl_seconds)
        self._ttl_ms = max(1, round(ttl_seconds * 1000))
        self.max_envelope_bytes = max_envelope_bytes or max_envelope_bytes_from_env()
        self.redaction = resolve_redaction(redaction)
        if client is not None:
            self._client: Redis[Any] = client
            self._owns_client = False
        else:
            if not url:
                raise ConfigurationError("RedisEventBuffer needs a url or a client")
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            try:
                self._client = redis.Redis.from_url(
                    url,
                    socket_timeout=socket_timeout,
                    socket_connect_timeout=socket_connect_timeout,
                    # No command retries: a record that ran but whose answer was
                    # lost must surface as StorageUnavailable, not a DUPLICATE.
                    retry=Retry(NoBackoff(), 0),
                    health_check_interval=30,
                )
            except ValueError as exc:
                raise ConfigurationError(f"not a Redis URL: {exc}") from exc
            self._owns_client = True
        self._pending_key = f"{namespace}:pending"
        self._clock_key = f"{namespace}:clock"
        self._env_prefix = f"{namespace}:env:"
        self._evt_prefix = f"{namespace}:evt:"
        self._record_script = self._client.register_script(_RECORD)
        self._delete_script = self._client.register_script(_DELETE)
        self._pending_script = self._client.register_script(_PENDING)

    def parse(self, envelope_id: object, envelope: object) -> ParsedEnvelope:
        """Validate an envelope against this buffer's limits without storing it."""
        return parse_envelope(
            envelope_id, envelope, max_bytes=self.max_envelope_bytes, redaction=self.redaction
        )

    def record(self, envelope_id: str, envelope: EnvelopeInput) -> RecordResult:
        parsed = self.parse(envelope_id, envelope)
        event_id: str | None = parsed.columns["event_id"]
        keys = [self._pending_key, self._clock_key, self._env_prefix + parsed.envelope_id]
        if event_id is not None:
            keys.append(self._evt_prefix + event_id)
        args = [
            parsed.envelope_id,
            parsed.text.encode("utf-8"),
            event_id or "",
            self._ttl_ms,
            self._env_prefix,
        ]
        with self._storage_errors(f"recording envelope {parsed.envelope_id}"):
            inserted = self._record_script(keys=keys, args=args)
        return RecordResult.NEW if int(inserted) == 1 else RecordResult.DUPLICATE

    def seen(self, envelope_id: str) -> bool:
        envelope_id = validate_envelope_id(envelope_id)
        with self._storage_errors(f"looking up envelope {envelope_id}"):
            return int(self._client.exists(self._env_prefix + envelope_id)) == 1

    def delete(self, envelope_id: str) -> None:
        envelope_id = validate_envelope_id(envelope_id)
        with self._storage_errors(f"deleting envelope {envelope_id}"):
            self._delete_script(
                keys=[self._pending_key, self._env_prefix + envelope_id],
                args=[envelope_id, self._evt_prefix],
            )

    def pending(self, limit: int | None = None) -> list[dict[str, Any]]:
        if limit is not None and limit < 0:
            raise ValueError("limit must be zero or more")
        with self._storage_errors("listing pending envelopes"):
            texts = self._pending_script(
                keys=[self._pending_key], args=[-1 if limit is None else limit, self._env_prefix]
            )
        return [decode_stored(_text(text)) for text in texts]

    def complete(self, envelope_id: str) -> None:
        envelope_id = validate_envelope_id(envelope_id)
        # One ZREM is atomic on its own; the envelope key stays until its TTL
        # so that the id is still deduplicated.
        with self._storage_errors(f"completing envelope {envelope_id}"):
            self._client.zrem(self._pending_key, envelope_id)

    def close(self) -> None:
        if self._owns_client:
            with self._storage_errors("closing the Redis client"):
                self._client.close()

    def __enter__(self) -> RedisEventBuffer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextmanager
    def _storage_errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except self._error as exc:
            raise StorageUnavailable(f"{action}: Redis: {exc}") from exc


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value
