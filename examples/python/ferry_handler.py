"""Write ferry event handlers in Python (componentize-py, world ``ferry:plugin/subscriber``).

A plugin module defines a class named ``Handler`` (componentize-py looks it up by that
name, because the WIT export is the interface ``handler``). Subclass :class:`FerryHandler`
so you only write the interesting part::

    from ferry_handler import Event, FerryHandler, Reject, Retry, log

    class Handler(FerryHandler):
        subscribe = ["OrderCreated"]

        def on_event(self, event: Event) -> None:
            order = event.json()          # malformed JSON -> Reject
            log.info(f"reserving {order['quantity']} x {order['sku']}")

Returning normally acknowledges the event. ``raise Retry(reason, delay_ms=None)`` asks the
host to try again later (its retry policy applies, then dead-lettering);
``raise Reject(reason)`` dead-letters the event at once. Any other exception is a bug: the
component traps, the host records a failure and applies its retry policy.

The host owns retries, backoff, dead-lettering and deduplication: delivery is at least once,
so handlers must be idempotent.
"""

from __future__ import annotations

import json as _json
from typing import Any, Iterable, List, Optional, Sequence, Union

from componentize_py_types import Err
from wit_world.imports import config as _config
from wit_world.imports import log as _log
from wit_world.imports import publish as _publish
from wit_world.imports import types as wit

__all__ = [
    "Event",
    "FerryHandler",
    "Reject",
    "Retry",
    "Subscription",
    "config",
    "log",
    "publish",
]


# --------------------------------------------------------------------------- errors


class Retry(Exception):
    """A transient failure: the host retries later, within the subscriber's retry policy.

    ``delay_ms`` is a hint for the delay before the next attempt; the host clamps it.
    """

    def __init__(self, reason: str, delay_ms: Optional[int] = None) -> None:
        super().__init__(reason)
        self.reason = str(reason)
        self.delay_ms = None if delay_ms is None else max(0, int(delay_ms))


class Reject(Exception):
    """A permanent failure: the event goes to the dead-letter stream without retry."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = str(reason)


# --------------------------------------------------------------------------- subscriptions


def Subscription(
    event_type: str,
    versions: Iterable[int] = (),
    stream: Optional[str] = None,
) -> wit.Subscription:
    """One subscription: ``"Order*"`` matches every type starting with ``Order``, ``"*"`` all.

    ``versions`` restricts the accepted schema versions (empty: every version); ``stream``
    reads another stream than the host's default one.
    """
    return wit.Subscription(event_type=event_type, versions=[int(v) for v in versions], stream=stream)


# --------------------------------------------------------------------------- event


class Event:
    """The event being handled, with its delivery metadata (CloudEvents attribute names)."""

    __slots__ = ("raw", "delivery")

    def __init__(self, raw: wit.Event, delivery: wit.Delivery) -> None:
        self.raw = raw
        self.delivery = delivery

    # CloudEvents attributes
    @property
    def id(self) -> str:
        return self.raw.id

    @property
    def source(self) -> str:
        return self.raw.source

    @property
    def type(self) -> str:
        return self.raw.event_type

    @property
    def time(self) -> str:
        return self.raw.time

    @property
    def content_type(self) -> str:
        return self.raw.datacontenttype

    @property
    def schema_version(self) -> int:
        return self.raw.schemaversion

    @property
    def subject(self) -> Optional[str]:
        return self.raw.subject

    @property
    def data_schema(self) -> Optional[str]:
        return self.raw.dataschema

    @property
    def correlation_id(self) -> Optional[str]:
        return self.raw.correlationid

    @property
    def causation_id(self) -> Optional[str]:
        return self.raw.causationid

    @property
    def partition_key(self) -> Optional[str]:
        return self.raw.partitionkey

    @property
    def traceparent(self) -> Optional[str]:
        return self.raw.traceparent

    @property
    def data(self) -> bytes:
        """The raw payload."""
        return self.raw.data

    def text(self) -> str:
        """The payload decoded as UTF-8; invalid UTF-8 is a :class:`Reject`."""
        try:
            return bytes(self.raw.data).decode("utf-8")
        except UnicodeDecodeError as e:
            raise Reject(f"payload is not UTF-8: {e}") from None

    def json(self) -> Any:
        """The payload parsed as JSON; a malformed payload is a :class:`Reject`."""
        try:
            return _json.loads(bytes(self.raw.data))
        except (ValueError, UnicodeDecodeError) as e:
            raise Reject(f"payload is not valid JSON: {e}") from None

    # delivery
    @property
    def stream(self) -> str:
        """The stream the event was read from."""
        return self.delivery.stream

    @property
    def entry_id(self) -> str:
        """The stream entry id, e.g. ``1700000000000-0``."""
        return self.delivery.entry_id

    @property
    def attempt(self) -> int:
        """1 on the first attempt, 2 on the first retry, ..."""
        return self.delivery.attempt

    @property
    def subscriber(self) -> str:
        """The subscriber (plugin name) handling the event."""
        return self.delivery.subscriber

    def __repr__(self) -> str:
        return f"Event(id={self.id!r}, type={self.type!r}, stream={self.stream!r}, attempt={self.attempt})"


# --------------------------------------------------------------------------- host imports


class _Log:
    """Log lines go into the host's tracing, tagged with the plugin name and the event id."""

    Level = _log.Level

    def write(self, level: "_log.Level", message: str) -> None:
        _log.write(level, str(message))

    def trace(self, message: str) -> None:
        _log.write(_log.Level.TRACE, str(message))

    def debug(self, message: str) -> None:
        _log.write(_log.Level.DEBUG, str(message))

    def info(self, message: str) -> None:
        _log.write(_log.Level.INFO, str(message))

    def warn(self, message: str) -> None:
        _log.write(_log.Level.WARN, str(message))

    def error(self, message: str) -> None:
        _log.write(_log.Level.ERROR, str(message))


class _Config:
    """Values the operator granted to this plugin in the host config (none by default)."""

    def get(self, key: str, default: Optional[str] = None) -> Optional[str]:
        value = _config.get(key)
        return default if value is None else value


class _Publish:
    """Follow-up events, written atomically with the acknowledgement of the handled event.

    A refused stream or an oversized event is raised as :class:`Reject` (like the Rust SDK);
    catch it if the follow-up is optional.
    """

    def send(
        self,
        event_type: str,
        data: Union[bytes, bytearray, str],
        *,
        stream: Optional[str] = None,
        content_type: Optional[str] = None,
        schema_version: Optional[int] = None,
        subject: Optional[str] = None,
        partition_key: Optional[str] = None,
    ) -> str:
        """Queue an event with a raw payload; returns the new event's id.

        ``stream=None`` means the stream of the handled event; ``content_type=None`` means
        ``application/json``; ``schema_version=None`` means 1.
        """
        payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        outgoing = wit.OutgoingEvent(
            event_type=event_type,
            stream=stream,
            data=payload,
            datacontenttype=content_type,
            schemaversion=schema_version,
            subject=subject,
            partitionkey=partition_key,
        )
        try:
            return _publish.send(outgoing)
        except Err as e:
            raise Reject(f"cannot publish {event_type}: {e.value}") from None

    def send_json(self, event_type: str, value: Any, **options: Any) -> str:
        """Queue an event whose payload is ``value`` serialized as JSON; returns its id."""
        try:
            payload = _json.dumps(value, separators=(",", ":")).encode("utf-8")
        except (TypeError, ValueError) as e:
            raise Reject(f"cannot serialize {event_type}: {e}") from None
        return self.send(event_type, payload, **options)


log = _Log()
config = _Config()
publish = _Publish()


# --------------------------------------------------------------------------- handler base


class FerryHandler:
    """Base class for the ``Handler`` class of a plugin module.

    Set ``subscribe`` to a list of event types (strings) or :func:`Subscription` values and
    implement :meth:`on_event`. This class implements the WIT ``handler`` interface
    (``subscriptions`` and ``handle``) and maps :class:`Retry` / :class:`Reject` to the WIT
    ``handler-error``.
    """

    subscribe: Sequence[Union[str, wit.Subscription]] = ()

    def on_event(self, event: Event) -> None:
        raise NotImplementedError("implement on_event(self, event)")

    # ---- the WIT interface; not meant to be overridden

    def subscriptions(self) -> List[wit.Subscription]:
        return [Subscription(s) if isinstance(s, str) else s for s in self.subscribe]

    def handle(self, event: wit.Event, delivery: wit.Delivery) -> None:
        try:
            self.on_event(Event(event, delivery))
        except Retry as e:
            raise Err(wit.HandlerError_Retry(wit.RetryRequest(reason=e.reason, delay_ms=e.delay_ms))) from None
        except Reject as e:
            raise Err(wit.HandlerError_Reject(e.reason)) from None
