"""The call path every simulated pile uses, on top of the ``ocpp`` library's ``ChargePoint``.

Same semantics as the library's ``call``/``route_message`` (one outstanding CALL at a time, the
library's JSON schemas checked on every request and response), made cheap enough for thousands of
piles in one process: validation runs inline on validators compiled once (fastjsonschema; the library's
own validation names the error when they refuse a payload) instead of a thread-pool hop per message,
camelCase/snake_case keys are converted once per key name with the library's own functions and
cached, JSON goes through orjson, and the answer reaches the caller through a future, not a queue.
Incoming CALLs from the server go through the library's ``_handle_call`` unchanged.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import fields, is_dataclass
from typing import TYPE_CHECKING, Any

import fastjsonschema
import orjson
from ocpp.charge_point import camel_to_snake_case, snake_to_camel_case
from ocpp.exceptions import OCPPError
from ocpp.messages import (
    Call,
    CallError,
    CallResult,
    MessageType,
    _validate_payload,
    get_validator,
    unpack,
)

if TYPE_CHECKING:
    from simulators.ocpp.pile import Pile

LOG = logging.getLogger("simulators.ocpp")

_CAMEL: dict[str, str] = {}
_SNAKE: dict[str, str] = {}
_FIELDS: dict[type, tuple[str, ...]] = {}
_uid_prefix = itertools.count(1)


def _camel_key(key: str) -> str:
    try:
        return _CAMEL[key]
    except KeyError:
        out: str = next(iter(snake_to_camel_case({key: None})))
        _CAMEL[key] = out
        return out


def _snake_key(key: str) -> str:
    try:
        return _SNAKE[key]
    except KeyError:
        out: str = next(iter(camel_to_snake_case({key: None})))
        _SNAKE[key] = out
        return out


def to_camel(obj: Any) -> Any:
    """What the library sends for a payload: dataclasses and dicts with camelCase keys, Nones dropped."""
    if isinstance(obj, dict):
        return {_camel_key(k): to_camel(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list | tuple):
        return [to_camel(v) for v in obj if v is not None]
    if is_dataclass(obj) and not isinstance(obj, type):
        cls = type(obj)
        names = _FIELDS.get(cls)
        if names is None:
            names = _FIELDS[cls] = tuple(f.name for f in fields(obj))
        return {_camel_key(n): to_camel(v) for n in names if (v := getattr(obj, n)) is not None}
    return obj


def to_snake(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {_snake_key(k): to_snake(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_snake(v) for v in obj]
    return obj


# Validators compiled to Python code (fastjsonschema) for the yes/no almost every message gets; a payload
# they refuse goes through the library's own validation, which raises the library's error.
_FAST: dict[tuple[str, int, str], Callable[[Any], Any] | None] = {}
_NO_FORMATS: dict[str, Any] = {"date-time": lambda _: True, "uri": lambda _: True}  # as the library
_DECIMAL_16 = {"SetChargingProfile", "RemoteStartTransaction", "GetCompositeSchedule"}


def _fast_valid(version: str, message_type: int, action: str, payload: Any) -> bool:
    key = (version, message_type, action)
    try:
        check = _FAST[key]
    except KeyError:
        check = None
        if not (version == "1.6" and action in _DECIMAL_16):
            try:
                schema = get_validator(message_type, action, version).schema
                check = fastjsonschema.compile(schema, formats=_NO_FORMATS)
            except (OSError, ValueError, fastjsonschema.JsonSchemaDefinitionException):
                check = None
        _FAST[key] = check
    if check is None:
        return False
    try:
        check(payload)
    except fastjsonschema.JsonSchemaException:
        return False
    return True


def _validate(message: Call | CallResult, version: str) -> None:
    """The library's validation, its compiled fast path first."""
    mtype = MessageType.Call if isinstance(message, Call) else MessageType.CallResult
    if not _fast_valid(version, mtype, str(message.action), message.payload):
        _validate_payload(message, version)


def _unpack(raw: str | bytes) -> Call | CallResult | CallError:
    try:
        msg = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return unpack(raw)  # the library's errors for non-JSON
    if isinstance(msg, list) and len(msg) >= 3:
        if msg[0] == MessageType.CallResult and len(msg) == 3:
            return CallResult(msg[1], msg[2])
        if msg[0] == MessageType.Call and len(msg) == 4:
            return Call(msg[1], msg[2], msg[3])
    return unpack(raw if isinstance(raw, str) else raw.decode())


class FastCallMixin:
    """Mixed in before ``ocpp.v16.ChargePoint`` / ``ocpp.v201.ChargePoint`` (see the module docstring)."""

    _ocpp_version: str
    _call_result: Any
    _call_lock: asyncio.Lock
    _response_timeout: float
    _connection: Any
    id: str

    pile: Pile
    _pending: tuple[str, asyncio.Future[CallResult | CallError]] | None
    _uids: itertools.count[int]
    _uid_base: str

    def _setup_fast(self, pile: Pile) -> None:
        self.pile = pile
        self._pending = None
        self._uids = itertools.count(1)
        self._uid_base = f"{next(_uid_prefix):x}-"

    async def call(
        self,
        payload: Any,
        suppress: bool = True,
        unique_id: str | None = None,
        skip_schema_validation: bool = False,
    ) -> Any:
        action = type(payload).__name__
        body = to_camel(payload)
        uid = unique_id if unique_id is not None else f"{self._uid_base}{next(self._uids)}"
        request = Call(uid, action, body)
        if not skip_schema_validation:
            _validate(request, self._ocpp_version)
        frame = orjson.dumps([MessageType.Call, uid, action, body])
        loop = asyncio.get_running_loop()
        pile = self.pile
        async with self._call_lock:
            fut: asyncio.Future[CallResult | CallError] = loop.create_future()
            self._pending = (uid, fut)
            t0 = time.perf_counter()
            try:
                await self._connection.send(frame.decode())
                pile.sent[action] += 1
                pile.fleet_stats.sent += 1
                async with asyncio.timeout(self._response_timeout):
                    response = await fut
            finally:
                self._pending = None
            pile.fleet_stats.record_latency(t0, time.perf_counter() - t0)
        if isinstance(response, CallError):
            pile.call_errors += 1
            LOG.debug("%s: CALLERROR for %s: %s", self.id, action, response)
            if suppress:
                return None
            raise response.to_exception()
        if not skip_schema_validation:
            response.action = action
            _validate(response, self._ocpp_version)
        cls = getattr(self._call_result, action)
        return cls(**to_snake(response.payload))

    def fail_pending(self, exc: BaseException) -> None:
        if self._pending is not None and not self._pending[1].done():
            self._pending[1].set_exception(exc)
            self._pending[1].exception()  # retrieved: the caller may be gone

    async def route_message(self, raw_msg: str | bytes) -> None:
        pile = self.pile
        pile.fleet_stats.received += 1
        try:
            msg = _unpack(raw_msg)
        except OCPPError as e:
            LOG.warning("%s: unparsable frame from the server: %s", self.id, e)
            return
        if isinstance(msg, Call):
            pile.received[msg.action] += 1
            try:
                await self._handle_call(msg)  # type: ignore[attr-defined]
            except OCPPError as error:
                await self._send(msg.create_call_error(error).to_json())
            return
        pending = self._pending
        if pending is not None and pending[0] == msg.unique_id and not pending[1].done():
            pending[1].set_result(msg)
        else:
            LOG.debug("%s: answer to no pending call: %s", self.id, raw_msg)

    async def _send(self, message: str) -> None:
        await self._connection.send(message)
