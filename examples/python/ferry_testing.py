"""Test a ferry handler written in Python without a host, with the language's own runner.

Inside a component, ``ferry_handler`` talks to the host through the modules componentize-py
generates (``wit_world``, ``componentize_py_types``). Outside one, import this module *first*:
it installs test doubles for them, so ``config.get`` reads what the test granted and
``publish`` and ``log`` record what the handler did::

    import ferry_testing as ft          # before the handler module
    from app import Handler

    ft.reset(config={"publish": "stock"})
    Handler().on_event(ft.event("OrderCreated", {"order_id": "o-1", "sku": "A", "quantity": 2}))
    assert ft.published()[0].event_type == "StockReserved"

Run with ``python3 -m unittest`` (see ``inventory/test_app.py``).
"""

from __future__ import annotations

import json as _json
import sys
import types as _types
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, List, Optional

__all__ = ["event", "published", "logs", "reset", "refuse_stream"]


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


class Err(Exception):
    """What componentize-py raises for a WIT `result` error."""

    def __init__(self, value: Any) -> None:
        super().__init__(value)
        self.value = value


# --------------------------------------------------------------------------- state


_config: Dict[str, str] = {}
_refused: List[str] = []
_published: List[_OutgoingEvent] = []
_logs: List[str] = []


def reset(config: Optional[Dict[str, str]] = None) -> None:
    """Forget follow-ups and logs; grant ``config`` (nothing by default)."""
    _config.clear()
    _config.update(config or {})
    _refused.clear()
    _published.clear()
    _logs.clear()


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


# --------------------------------------------------------------------------- the modules


def _install() -> None:
    if "wit_world" in sys.modules:
        return
    types_mod = _types.ModuleType("wit_world.imports.types")
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
    imports = _types.ModuleType("wit_world.imports")
    imports.types, imports.log, imports.config, imports.publish = types_mod, log_mod, config_mod, publish_mod
    world = _types.ModuleType("wit_world")
    world.imports = imports
    cpt = _types.ModuleType("componentize_py_types")
    cpt.Err = Err
    for name, mod in {
        "wit_world": world,
        "wit_world.imports": imports,
        "wit_world.imports.types": types_mod,
        "wit_world.imports.log": log_mod,
        "wit_world.imports.config": config_mod,
        "wit_world.imports.publish": publish_mod,
        "componentize_py_types": cpt,
    }.items():
        sys.modules[name] = mod


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
