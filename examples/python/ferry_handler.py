"""Write ferry event handlers in Python (componentize-py, world ``subscriber`` of ``wit/``:
``ferry:plugin/subscriber@0.2.0`` plus ``wasi:http/outgoing-handler``).

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
so handlers must be idempotent. Two capabilities, each off until the operator grants it:

- :data:`state`: the subscriber's own keys and values (``state = true``). Reads see the
  committed state plus this event's own writes; the writes are committed with the event's
  acknowledgement, so a retried, rejected or crashed event leaves none behind: state changes
  exactly once per event.
- :data:`http`: outbound HTTP (``[subscribers.NAME.http] allow = ["https://api.example"]``).
  A call is at least once (a retried event calls again); every request carries
  ``Idempotency-Key: SUBSCRIBER:EVENT_ID``, equal on every attempt, for the receiver to dedupe.
"""

from __future__ import annotations

import json as _json
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from urllib.parse import urlsplit

from componentize_py_types import Err, Ok
from wit_world.imports import config as _config
from wit_world.imports import ferry_plugin_types as wit  # `types` of ferry:plugin (wasi:http has one too)
from wit_world.imports import log as _log
from wit_world.imports import publish as _publish
from wit_world.imports import state as _state

try:  # a module-level import: componentize-py bundles only what the app imports at build time
    from wit_world.imports import outgoing_handler as _outgoing
    from wit_world.imports import streams as _streams
    from wit_world.imports import wasi_http_types as _h
except ImportError:  # a world without wasi:http (or the test doubles, which replace the transport)
    _outgoing = _streams = _h = None

__all__ = [
    "Event",
    "FerryHandler",
    "HttpError",
    "Reject",
    "Response",
    "Retry",
    "StateError",
    "Subscription",
    "config",
    "http",
    "log",
    "publish",
    "state",
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


class StateError(Retry):
    """A state call failed (not granted, a key or value over its limit, the quota reached).

    A :class:`Retry`, so uncaught it retries the event (the host does so anyway when the grant
    is missing); the event's writes are discarded either way.
    """


class HttpError(Exception):
    """An HTTP request failed before a response arrived.

    ``code`` is the ``wasi:http`` error code's name: ``HttpRequestDenied`` (not granted),
    ``DestinationIpProhibited``, ``ConnectionRefused``, ``ConnectionTimeout``,
    ``HttpResponseTimeout``, ``HttpResponseBodySize``, ...
    """

    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code


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


class _State:
    """The subscriber's own state (needs ``state = true``): changed exactly once per event.

    Keys are strings, values bytes (``str`` is stored as UTF-8). A failed call raises
    :class:`StateError`.
    """

    def get(self, key: str) -> Optional[bytes]:
        """The value of ``key`` (None: not set)."""
        value = self._call("get", key, lambda: _state.get(key))
        return None if value is None else bytes(value)

    def get_text(self, key: str, default: Optional[str] = None) -> Optional[str]:
        value = self.get(key)
        return default if value is None else value.decode("utf-8")

    def get_json(self, key: str, default: Any = None) -> Any:
        value = self.get(key)
        return default if value is None else _json.loads(value)

    def get_many(self, keys: Sequence[str]) -> List[Optional[bytes]]:
        """The values of ``keys``, in order (None where not set)."""
        keys = [str(k) for k in keys]
        values = self._call("get_many", ",".join(keys), lambda: _state.get_many(keys))
        return [None if v is None else bytes(v) for v in values]

    def exists(self, key: str) -> bool:
        return bool(self._call("exists", key, lambda: _state.exists(key)))

    def set(self, key: str, value: Union[bytes, bytearray, str]) -> None:
        """Set ``key`` to ``value``, committed with the event's acknowledgement."""
        payload = value.encode("utf-8") if isinstance(value, str) else bytes(value)
        self._call("set", key, lambda: _state.set(key, payload))

    def set_json(self, key: str, value: Any) -> None:
        self.set(key, _json.dumps(value, separators=(",", ":")))

    def delete(self, key: str) -> None:
        self._call("delete", key, lambda: _state.delete(key))

    def increment(self, key: str, delta: int = 1) -> int:
        """Add ``delta`` to the integer at ``key`` (absent: 0); returns the new value. No
        concurrent increment is lost."""
        return int(self._call("increment", key, lambda: _state.increment(key, int(delta))))

    @staticmethod
    def _call(op: str, key: str, call: Any) -> Any:
        try:
            return call()
        except Err as e:
            raise StateError(f"state {op} `{key}`: {e.value}") from None


class Response:
    """An HTTP response: ``status``, ``headers`` (lower-case name -> list of values), ``body``."""

    __slots__ = ("status", "headers", "body")

    def __init__(self, status: int, headers: Dict[str, List[str]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def ok(self) -> bool:
        """Whether the status is 2xx."""
        return 200 <= self.status < 300

    def header(self, name: str) -> Optional[str]:
        values = self.headers.get(name.lower())
        return values[0] if values else None

    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return _json.loads(self.body)

    def __repr__(self) -> str:
        return f"Response(status={self.status}, {len(self.body)} bytes)"


Headers = Union[Dict[str, str], Sequence[Tuple[str, str]]]


class _Http:
    """Outbound HTTP through ``wasi:http/outgoing-handler`` (needs the operator's grant).

    Blocking: ``request`` returns when the whole response has arrived (the host bounds the
    wait by its timeouts and the event's deadline). The host adds ``traceparent`` and
    ``Idempotency-Key``; redirects are not followed.
    """

    def request(
        self, method: str, url: str, *, headers: Optional[Headers] = None, body: Union[bytes, str, None] = None
    ) -> Response:
        """Send a request; raises :class:`HttpError` when no response arrives."""
        pairs = list(headers.items()) if isinstance(headers, dict) else list(headers or ())
        payload = body.encode("utf-8") if isinstance(body, str) else (bytes(body) if body is not None else None)
        if payload is not None and not any(str(k).lower() == "content-length" for k, _ in pairs):
            # Without it the body goes chunked, which not every API accepts.
            pairs.append(("content-length", str(len(payload))))
        status, fields, data = _transport(method.upper(), url, [(str(k), str(v)) for k, v in pairs], payload)
        collected: Dict[str, List[str]] = {}
        for name, value in fields:
            collected.setdefault(name.lower(), []).append(value)
        return Response(status, collected, data)

    def get(self, url: str, *, headers: Optional[Headers] = None) -> Response:
        return self.request("GET", url, headers=headers)

    def post(self, url: str, body: Union[bytes, str], *, headers: Optional[Headers] = None) -> Response:
        return self.request("POST", url, headers=headers, body=body)

    def post_json(self, url: str, value: Any, *, headers: Optional[Headers] = None) -> Response:
        """POST ``value`` serialized as JSON (``content-type: application/json``)."""
        pairs = list(headers.items()) if isinstance(headers, dict) else list(headers or ())
        pairs.append(("content-type", "application/json"))
        return self.request("POST", url, headers=pairs, body=_json.dumps(value, separators=(",", ":")))


def _wasi_send(
    method: str, url: str, headers: List[Tuple[str, str]], body: Optional[bytes]
) -> Tuple[int, List[Tuple[str, str]], bytes]:
    """One request through ``wasi:http``, blocking on its pollables; (status, headers, body)."""
    if _h is None:
        raise HttpError("HttpRequestDenied", "the plugin's world does not import wasi:http/outgoing-handler")
    h, streams = _h, _streams
    parts = urlsplit(url)
    schemes = {"http": h.Scheme_Http(), "https": h.Scheme_Https()}
    if parts.scheme not in schemes or not parts.netloc:
        raise HttpError("HttpRequestUriInvalid", url)
    methods = {"GET": h.Method_Get, "HEAD": h.Method_Head, "POST": h.Method_Post, "PUT": h.Method_Put,
               "DELETE": h.Method_Delete, "PATCH": h.Method_Patch, "OPTIONS": h.Method_Options}
    try:
        fields = h.Fields.from_list([(name, value.encode("utf-8")) for name, value in headers])
    except Err as e:
        raise HttpError("HttpRequestHeaderSize", f"bad header: {e.value}") from None
    request = h.OutgoingRequest(fields)
    request.set_method(methods[method]() if method in methods else h.Method_Other(method))
    request.set_scheme(schemes[parts.scheme])
    request.set_authority(parts.netloc)
    request.set_path_with_query((parts.path or "/") + (f"?{parts.query}" if parts.query else ""))
    outgoing = request.body()
    try:
        future = _outgoing.handle(request, None)
    except Err as e:
        raise HttpError(_code(e.value)) from None
    # A refused request's body stream is closed: the write fails, and the response's error
    # (e.g. HttpRequestDenied) says why, so it is read before the write's failure is reported.
    unwritten = _write_body(h, outgoing, body)
    with future:
        with future.subscribe() as ready:
            ready.block()
        result = future.get()
    if result is None or not isinstance(result, Ok):
        raise HttpError("InternalError", "the response was taken already")
    if not isinstance(result.value, Ok):
        raise HttpError(_code(result.value.value))
    if unwritten is not None:
        with result.value.value:
            raise HttpError("HttpRequestBodySize", f"writing the body: {unwritten}")
    with result.value.value as response:
        status = response.status()
        with response.headers() as fields:
            pairs = [(name, bytes(value).decode("latin-1")) for name, value in fields.entries()]
        incoming = response.consume()
        chunks = []
        with incoming.stream() as stream:
            while True:
                try:
                    chunks.append(bytes(stream.blocking_read(65536)))
                except Err as e:
                    if isinstance(e.value, streams.StreamError_Closed):
                        break
                    error = h.http_error_code(e.value.value)
                    raise HttpError(_code(error) if error is not None else "HttpProtocolError", "reading the body") from None
        with h.IncomingBody.finish(incoming):
            pass
    return status, pairs, b"".join(chunks)


def _write_body(h: Any, outgoing: Any, body: Optional[bytes]) -> Optional[str]:
    """Write ``body`` and finish the request; why it could not be written, if it could not."""
    failed = None
    if body:
        with outgoing.write() as stream:
            try:
                for start in range(0, len(body), 4096):
                    stream.blocking_write_and_flush(body[start : start + 4096])
            except Err as e:
                failed = str(e.value)
    if failed is not None:
        outgoing.__exit__(None, None, None)  # dropped unfinished: the request is cancelled
        return failed
    try:
        h.OutgoingBody.finish(outgoing, None)
    except Err as e:
        return _code(e.value)
    return None


def _code(error: Any) -> str:
    """The name of a ``wasi:http`` error-code case (``ErrorCode_HttpRequestDenied`` -> ...)."""
    name = type(error).__name__
    return name.split("_", 1)[1] if name.startswith("ErrorCode_") else name


# How requests are sent: replaced by the test doubles (``ferry_testing``).
_transport = _wasi_send

log = _Log()
config = _Config()
publish = _Publish()
state = _State()
http = _Http()


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
