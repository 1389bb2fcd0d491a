"""Test a ferry handler written in Python without a host, with the language's own runner.

Inside a component, ``ferry_handler`` talks to the host through the modules componentize-py
generates (``wit_world``, ``componentize_py_types``). Outside one, import this module *first*:
it installs test doubles for them, so ``config.get`` reads what the test granted, ``state``
keeps keys as the host does (an event's writes are committed only if it is acknowledged),
``http`` answers with what the test says, and ``publish`` and ``log`` record what the handler
did::

    import ferry_testing as ft          # before the handler module
    from app import Handler

    ft.reset(config={"publish": "stock"}, state={"reserved:A": b"3"},
             http=lambda request: (200, "{}"))
    outcome = ft.handle(Handler(), ft.event("OrderCreated", {"order_id": "o-1", "sku": "A", "quantity": 2}))
    assert outcome == "ack" and ft.state()["reserved:A"] == b"5"
    assert ft.published()[0].event_type == "StockReserved"
    assert ft.requests()[0].json()["order_id"] == "o-1"

Run with ``python3 -m unittest`` (see ``inventory/test_app.py``).
"""

from __future__ import annotations

import json as _json
import sys
import types as _types
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

__all__ = ["event", "handle", "published", "logs", "requests", "reset", "refuse_stream", "state", "Request"]


# --------------------------------------------------------------------------- the WIT types


@dataclass
class _Subscription:
    event_type: str
    versions: List[int] = field(default_factory=list)
    stream: Optional[str] = None


@dataclass
class _Event:
    id: str
    source: str
    event_type: str
    time: str
    datacontenttype: str
    schemaversion: int
    subject: Optional[str]
    dataschema: Optional[str]
    correlationid: Optional[str]
    causationid: Optional[str]
    partitionkey: Optional[str]
    specversion: str
    traceparent: Optional[str]
    data: bytes


@dataclass
class _Delivery:
    stream: str
    entry_id: str
    attempt: int
    subscriber: str


@dataclass
class _OutgoingEvent:
    event_type: str
    stream: Optional[str]
    data: bytes
    datacontenttype: Optional[str]
    schemaversion: Optional[int]
    subject: Optional[str]
    partitionkey: Optional[str]


@dataclass
class _RetryRequest:
    reason: str
    delay_ms: Optional[int]


@dataclass
class _HandlerErrorRetry:
    value: _RetryRequest


@dataclass
class _HandlerErrorReject:
    value: str


class _Level(Enum):
    TRACE = 0
    DEBUG = 1
    INFO = 2
    WARN = 3
    ERROR = 4


class Ok:
    """What componentize-py returns for a WIT `result` success (unused by the doubles)."""

    def __init__(self, value: Any) -> None:
        self.value = value


class Err(Exception):
    """What componentize-py raises for a WIT `result` error."""

    def __init__(self, value: Any) -> None:
        super().__init__(value)
        self.value = value


# --------------------------------------------------------------------------- state


@dataclass
class Request:
    """An HTTP request the handler made."""

    method: str
    url: str
    headers: List[Tuple[str, str]]
    body: bytes

    def header(self, name: str) -> Optional[str]:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def json(self) -> Any:
        return _json.loads(self.body)


# What the test's HTTP double answers: (status, body) or (status, body, headers), or an
# exception (``ferry_handler.HttpError("ConnectionRefused")``) raised as the transport's failure.
Responder = Callable[[Request], Any]

_config: Dict[str, str] = {}
_refused: List[str] = []
_published: List[_OutgoingEvent] = []
_logs: List[str] = []
_committed: Dict[str, bytes] = {}
_pending: Dict[str, Optional[bytes]] = {}
_state_granted: List[bool] = [True]
_requests: List[Request] = []
_responder: List[Optional[Responder]] = [None]


def reset(
    config: Optional[Dict[str, str]] = None,
    state: Optional[Dict[str, Union[bytes, str]]] = None,
    http: Optional[Responder] = None,
    state_granted: bool = True,
) -> None:
    """Forget follow-ups, logs, requests and state; grant ``config`` (nothing by default),
    start from the committed ``state``, answer HTTP requests with ``http`` (none: every
    request is denied, as without a grant)."""
    _config.clear()
    _config.update(config or {})
    _refused.clear()
    _published.clear()
    _logs.clear()
    _committed.clear()
    _committed.update({k: v.encode("utf-8") if isinstance(v, str) else bytes(v) for k, v in (state or {}).items()})
    _pending.clear()
    _state_granted[0] = state_granted
    _requests.clear()
    _responder[0] = http


def state() -> Dict[str, bytes]:
    """The committed state: what acknowledged events (through :func:`handle`) left behind."""
    return dict(_committed)


def requests() -> List[Request]:
    """The HTTP requests made so far (``method``, ``url``, ``headers``, ``body``)."""
    return list(_requests)


def handle(handler: Any, event: Any) -> str:
    """Run ``handler.on_event(event)`` as the host does and say how it ended: ``"ack"`` (its
    state writes committed), ``"retry"`` or ``"reject"`` (its writes discarded). Any other
    exception discards the writes and is raised (in a host, the component traps)."""
    from ferry_handler import Reject, Retry

    try:
        handler.on_event(event)
    except Retry:
        _pending.clear()
        return "retry"
    except Reject:
        _pending.clear()
        return "reject"
    except BaseException:
        _pending.clear()
        raise
    for key, value in _pending.items():
        if value is None:
            _committed.pop(key, None)
        else:
            _committed[key] = value
    _pending.clear()
    return "ack"


def refuse_stream(stream: str) -> None:
    """Make publishing to ``stream`` fail, as an operator's missing grant does."""
    _refused.append(stream)


def published() -> List[_OutgoingEvent]:
    """The follow-ups published so far (``event_type``, ``stream``, ``data``, ...)."""
    return list(_published)


def logs() -> List[str]:
    """The log lines written so far, as ``LEVEL message``."""
    return list(_logs)


def _send(outgoing: _OutgoingEvent) -> str:
    if outgoing.stream in _refused:
        raise Err(f"publishing to stream `{outgoing.stream}` is not allowed")
    _published.append(outgoing)
    return f"test-follow-up-{len(_published)}"


def _write(level: _Level, message: str) -> None:
    _logs.append(f"{level.name} {message}")


def _read(key: str) -> Optional[bytes]:
    if not _state_granted[0]:
        raise Err("state is not granted: needs `state = true` in `[subscribers.NAME]` (or NAME.toml)")
    return _pending[key] if key in _pending else _committed.get(key)


def _write_state(key: str, value: Optional[bytes]) -> None:
    _read(key)
    _pending[key] = value


def _increment(key: str, delta: int) -> int:
    current = _read(key)
    try:
        value = int(current or b"0") + delta
    except ValueError:
        raise Err(f"the value of `{key}` is not a decimal integer") from None
    _pending[key] = str(value).encode("ascii")
    return value


def _send_http(method: str, url: str, headers: List[Tuple[str, str]], body: Optional[bytes]):
    from ferry_handler import HttpError

    request = Request(method=method, url=url, headers=list(headers), body=body or b"")
    _requests.append(request)
    if _responder[0] is None:
        raise HttpError("HttpRequestDenied", "no HTTP granted in this test (ft.reset(http=...))")
    answer = _responder[0](request)
    if isinstance(answer, BaseException):
        raise answer
    status, data, *rest = answer
    reply_headers = list(rest[0].items()) if rest else []
    return int(status), reply_headers, data.encode("utf-8") if isinstance(data, str) else bytes(data)


# --------------------------------------------------------------------------- the modules


def _install() -> None:
    if "wit_world" in sys.modules:
        return
    types_mod = _types.ModuleType("wit_world.imports.ferry_plugin_types")
    types_mod.Subscription = _Subscription
    types_mod.Event = _Event
    types_mod.Delivery = _Delivery
    types_mod.OutgoingEvent = _OutgoingEvent
    types_mod.RetryRequest = _RetryRequest
    types_mod.HandlerError_Retry = _HandlerErrorRetry
    types_mod.HandlerError_Reject = _HandlerErrorReject
    log_mod = _types.ModuleType("wit_world.imports.log")
    log_mod.Level = _Level
    log_mod.write = _write
    config_mod = _types.ModuleType("wit_world.imports.config")
    config_mod.get = lambda key: _config.get(key)
    publish_mod = _types.ModuleType("wit_world.imports.publish")
    publish_mod.send = _send
    state_mod = _types.ModuleType("wit_world.imports.state")
    state_mod.get = _read
    state_mod.get_many = lambda keys: [_read(k) for k in keys]
    state_mod.exists = lambda key: _read(key) is not None
    state_mod.set = lambda key, value: _write_state(key, bytes(value))
    state_mod.delete = lambda key: _write_state(key, None)
    state_mod.increment = _increment
    imports = _types.ModuleType("wit_world.imports")
    imports.ferry_plugin_types, imports.log, imports.config = types_mod, log_mod, config_mod
    imports.publish, imports.state = publish_mod, state_mod
    world = _types.ModuleType("wit_world")
    world.imports = imports
    cpt = _types.ModuleType("componentize_py_types")
    cpt.Err, cpt.Ok = Err, Ok
    for name, mod in {
        "wit_world": world,
        "wit_world.imports": imports,
        "wit_world.imports.ferry_plugin_types": types_mod,
        "wit_world.imports.log": log_mod,
        "wit_world.imports.config": config_mod,
        "wit_world.imports.publish": publish_mod,
        "wit_world.imports.state": state_mod,
        "componentize_py_types": cpt,
    }.items():
        sys.modules[name] = mod
    import ferry_handler

    ferry_handler._transport = _send_http


_install()


def event(
    event_type: str,
    data: Any = None,
    *,
    id: str = "test-event",
    attempt: int = 1,
    stream: str = "events",
    partition_key: Optional[str] = None,
    content_type: str = "application/json",
    schema_version: int = 1,
):
    """An event of ``event_type`` for a handler's ``on_event`` (``data``: bytes, str, or a
    value serialized as JSON)."""
    from ferry_handler import Event

    if isinstance(data, (bytes, bytearray)):
        payload = bytes(data)
    elif isinstance(data, str):
        payload = data.encode("utf-8")
    else:
        payload = _json.dumps({} if data is None else data).encode("utf-8")
    raw = _Event(
        id=id, source="tests", event_type=event_type, time="2026-01-01T00:00:00Z",
        datacontenttype=content_type, schemaversion=schema_version, subject=None, dataschema=None,
        correlationid=None, causationid=None, partitionkey=partition_key, specversion="1.0",
        traceparent=None, data=payload,
    )
    return Event(raw, _Delivery(stream=stream, entry_id="0-1", attempt=attempt, subscriber="test"))
