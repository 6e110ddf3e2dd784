"""OCPP-J framing on top of the ``ocpp`` library's ChargePoint, with the specification's error codes.

The library's ``route_message``/``_handle_call``/``call`` are replaced because they depart from the
OCPP-J specifications:

- invalid JSON is dropped silently by the library; here it is answered with a CALLERROR
  (1.6J: ``FormationViolation``, the 1.6J spelling; 2.0.1: ``FormatViolation``) with message id ``"-1"``
  (the id could not be read) and the connection carries on;
- an unknown action gets ``NotImplemented`` ("Requested Action is not known by receiver") and a known
  action without a handler ``NotSupported`` ("recognized but not supported") — the library has the two
  the other way round;
- a schema violation maps by what failed: wrong JSON type -> ``TypeConstraintViolation`` (also a string
  longer than its CiString type), missing property / wrong number of items -> ``OccurenceConstraintViolation``
  (1.6J spelling) / ``OccurrenceConstraintViolation`` (2.0.1), an enum/range/pattern violation ->
  ``PropertyConstraintViolation``, an unexpected property or a payload that is not an object ->
  ``FormationViolation`` / ``FormatViolation``;
- a frame with an unknown message type id gets ``MessageTypeNotSupported`` (2.0.1) / ``ProtocolError``
  (1.6J has no such code); a frame that is not a well-formed OCPP-J array gets ``RpcFrameworkError`` (2.0.1)
  / ``ProtocolError`` (1.6J);
- schema validation runs inline on validators compiled once to Python code (fastjsonschema; the library
  hops to a thread pool and interprets the schema for every message), with jsonschema naming what failed
  when a payload is invalid; every message the server sends (results and calls) is validated too;
- ``call`` keeps one future per message id, so a late answer can never be taken for the next call's.

Handlers are the library's ``@on``/``@after`` methods. A handler must never await ``call`` on its own
pile (the receive loop is waiting for the handler): use ``spawn`` or an ``@after`` hook.
"""

from __future__ import annotations

import asyncio
import decimal
import inspect
import json
import logging
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, is_dataclass
from typing import Any, ClassVar

import fastjsonschema
import orjson
from jsonschema import Draft4Validator
from jsonschema.exceptions import ValidationError as SchemaError
from jsonschema.exceptions import best_match
from ocpp.charge_point import (
    ChargePoint,
    camel_to_snake_case,
    remove_nones,
    serialize_as_dict,
    snake_to_camel_case,
)
from ocpp.exceptions import OCPPError
from ocpp.messages import get_validator
from ocpp.routing import create_route_map
from websockets.exceptions import ConnectionClosed

from ocpp_server import metrics

log = logging.getLogger(__name__)

CALL, CALLRESULT, CALLERROR = 2, 3, 4


@dataclass(frozen=True, slots=True)
class ErrorCodes:
    """The CALLERROR codes whose names differ between OCPP-J versions."""

    format_violation: str
    occurrence_violation: str
    message_type_not_supported: str
    rpc_framework: str


class SpecError(Exception):
    """Raised by a handler (or the framing) to answer a CALL with a CALLERROR."""

    def __init__(self, code: str, description: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(f"{code}: {description}")
        self.code = code
        self.description = description[:255]
        self.details = details or {}


class CallErrorReceived(Exception):
    """The pile answered our CALL with a CALLERROR."""

    def __init__(self, code: str, description: str, details: Any) -> None:
        super().__init__(f"{code}: {description}")
        self.code = code
        self.description = description
        self.details = details


class InvalidMessage(ValueError):
    """A message failed its JSON schema."""

    def __init__(self, code: str, description: str) -> None:
        super().__init__(f"{code}: {description}")
        self.code = code
        self.description = description


# 1.6 schemas with multipleOf 0.1 must be validated on Decimals (as the library does).
_DECIMAL_16 = {
    (CALL, "SetChargingProfile"),
    (CALL, "RemoteStartTransaction"),
    (CALLRESULT, "GetCompositeSchedule"),
}
# Formats are not checked, as by the library's validators (jsonschema without a format checker).
_FORMATS: dict[str, Any] = {"date-time": lambda _: True, "uri": lambda _: True}


@dataclass(frozen=True, slots=True)
class _Schema:
    """A schema compiled twice: to Python code (fastjsonschema) for the fast yes/no that almost every
    message gets, and as jsonschema's Draft4Validator (the library's) to name what failed."""

    fast: Callable[[Any], Any] | None
    full: Draft4Validator


_schemas: dict[tuple[str, int, str], _Schema | None] = {}


def _schema(version: str, message_type_id: int, action: str) -> _Schema | None:
    key = (version, message_type_id, action)
    try:
        return _schemas[key]
    except KeyError:
        pass
    decimal_16 = version == "1.6" and (message_type_id, action) in _DECIMAL_16
    parse_float: Any = decimal.Decimal if decimal_16 else float
    try:
        full: Draft4Validator = get_validator(message_type_id, action, version, parse_float=parse_float)
    except (OSError, ValueError):
        _schemas[key] = None
        return None
    fast = None if decimal_16 else fastjsonschema.compile(full.schema, formats=_FORMATS)
    _schemas[key] = found = _Schema(fast, full)
    return found


def _valid_fast(schema: _Schema, payload: Any) -> bool:
    if schema.fast is None:
        return False
    try:
        schema.fast(payload)
    except fastjsonschema.JsonSchemaException:
        return False
    return True


def schema_check(
    version: str, codes: ErrorCodes, message_type_id: int, action: str, payload: Any
) -> InvalidMessage | None:
    """None when ``payload`` is valid for the action, else the CALLERROR it deserves."""
    schema = _schema(version, message_type_id, action)
    if schema is None:
        return InvalidMessage("NotImplemented", f"no schema for {action}")
    if _valid_fast(schema, payload):
        return None
    validator = schema.full
    if version == "1.6" and (message_type_id, action) in _DECIMAL_16:
        payload = json.loads(json.dumps(payload, default=float), parse_float=decimal.Decimal)
    if validator.is_valid(payload):
        return None
    error: SchemaError | None = best_match(validator.iter_errors(payload))
    if error is None:  # pragma: no cover - is_valid said otherwise
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "payload"
    text = f"{where}: {error.message}"[:255]
    kind = error.validator
    if kind == "type" and not error.absolute_path:
        return InvalidMessage(codes.format_violation, text)
    if kind in ("type", "maxLength"):
        return InvalidMessage("TypeConstraintViolation", text)
    if kind in ("required", "minItems", "maxItems", "dependencies"):
        return InvalidMessage(codes.occurrence_violation, text)
    if kind in ("additionalProperties", "minProperties", "maxProperties"):
        return InvalidMessage(codes.format_violation, text)
    return InvalidMessage("PropertyConstraintViolation", text)


_SNAKE: dict[str, str] = {}


def snake_keys(data: Any) -> Any:
    """The library's ``camel_to_snake_case`` with each key's conversion (two regexes) done once."""
    if isinstance(data, dict):
        out = {}
        for key, value in data.items():
            snake = _SNAKE.get(key)
            if snake is None:
                snake = next(iter(camel_to_snake_case({key: None})))
                if len(_SNAKE) < 10_000:  # keys are schema-checked, but bound the cache anyway
                    _SNAKE[key] = snake
            out[snake] = snake_keys(value) if isinstance(value, dict | list) else value
        return out
    if isinstance(data, list):
        return [snake_keys(v) if isinstance(v, dict | list) else v for v in data]
    return data


def _dumps(message: list[Any]) -> str:
    return orjson.dumps(message, default=float).decode()


def to_payload(obj: Any) -> dict[str, Any]:
    """A library dataclass (snake_case) or a camelCase dict -> the camelCase JSON payload."""
    if is_dataclass(obj) and not isinstance(obj, type):
        body = remove_nones(snake_to_camel_case(serialize_as_dict(obj)))
        assert isinstance(body, dict)
        return body
    if isinstance(obj, dict):
        return obj
    raise TypeError(f"not a payload: {type(obj).__name__}")


class OcppConnection(ChargePoint):
    """Version-free OCPP-J endpoint of one pile's websocket. Subclasses set the version attributes."""

    _ocpp_version: ClassVar[str]
    codes: ClassVar[ErrorCodes]
    known_actions: ClassVar[frozenset[str]]  # every action of the version, either direction

    # action -> {"_on_action": function, "_after_action": function, "_skip_schema_validation": bool}:
    # the library's route map, built once per class (handlers are called with the pile as ``self``).
    _routes: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._routes = create_route_map(cls)

    def __init__(self, ocpp_id: str, connection: Any, response_timeout: float = 30.0) -> None:
        # Not ChargePoint.__init__: per connection it builds a route map of bound methods and a response
        # queue, neither used here — some 40 container objects per pile that the cyclic collector walks
        # for as long as the pile stays connected. These are the attributes its methods rely on.
        self.id = ocpp_id
        self._connection = connection
        self._response_timeout = response_timeout
        self._call_lock = asyncio.Lock()
        self._unique_id_generator = uuid.uuid4
        self.logger = log
        self._pending: dict[str, asyncio.Future[list[Any]]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    # ------------------------------------------------------------------------------------- receiving

    async def start(self) -> None:
        try:
            async for raw in self._connection:
                await self.route_message(raw)
        except ConnectionClosed:
            pass
        finally:
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(ConnectionError("pile disconnected"))

    async def route_message(self, raw_msg: str | bytes) -> None:
        """Never raises for anything a pile sends."""
        started = time.perf_counter()
        try:
            msg = orjson.loads(raw_msg)
        except orjson.JSONDecodeError:
            metrics.FRAMES_REJECTED.labels(self._ocpp_version, "invalid_json").inc()
            log.warning("invalid JSON from pile", extra={"pile": self.id, "frame": str(raw_msg)[:200]})
            await self._send_error("-1", self.codes.format_violation, "Message is not valid JSON")
            return
        if (
            not isinstance(msg, list)
            or len(msg) < 3
            or not isinstance(msg[1], str)
            or isinstance(msg[0], bool)
        ):
            uid = msg[1] if isinstance(msg, list) and len(msg) > 1 and isinstance(msg[1], str) else "-1"
            metrics.FRAMES_REJECTED.labels(self._ocpp_version, "not_rpc").inc()
            await self._send_error(uid, self.codes.rpc_framework, "Not an OCPP-J message array")
            return
        type_id, uid = msg[0], msg[1]
        if type_id == CALL:
            if len(msg) != 4 or not isinstance(msg[2], str):
                await self._send_error(uid, self.codes.rpc_framework, "A CALL has 4 elements")
                return
            await self._on_call(uid, msg[2], msg[3], started)
        elif type_id in (CALLRESULT, CALLERROR):
            fut = self._pending.get(uid)
            if fut is None or fut.done():
                log.warning("answer to no pending call", extra={"pile": self.id, "unique_id": uid})
            else:
                fut.set_result(msg)
        else:
            metrics.FRAMES_REJECTED.labels(self._ocpp_version, "message_type").inc()
            await self._send_error(
                uid, self.codes.message_type_not_supported, f"MessageTypeId {type_id!r} is not supported"
            )

    async def _on_call(self, uid: str, action: str, payload: Any, started: float) -> None:
        outcome = "ok"
        try:
            handlers = self._routes.get(action)
            if handlers is None or "_on_action" not in handlers:
                if action in self.known_actions:
                    raise SpecError("NotSupported", f"{action} is recognized but not supported")
                raise SpecError("NotImplemented", f"{action} is not known")
            if not isinstance(payload, dict):
                raise SpecError(self.codes.format_violation, "payload must be a JSON object")
            if not handlers.get("_skip_schema_validation", False):
                bad = schema_check(self._ocpp_version, self.codes, CALL, action, payload)
                if bad is not None:
                    raise SpecError(bad.code, bad.description)
            kwargs = snake_keys(payload)
            result = handlers["_on_action"](self, **kwargs)
            if inspect.isawaitable(result):
                result = await result
            body = to_payload(result)
            bad = schema_check(self._ocpp_version, self.codes, CALLRESULT, action, body)
            if bad is not None:
                log.error(
                    "our response breaks the schema",
                    extra={"pile": self.id, "action": action, "error": bad.description},
                )
                raise SpecError("InternalError", "response could not be built")
            await self._send(_dumps([CALLRESULT, uid, body]))
        except SpecError as err:
            outcome = err.code
            await self._send_error(uid, err.code, err.description, err.details)
            return
        except OCPPError as err:  # raised by library helpers
            outcome = err.code
            await self._send_error(uid, err.code, str(err.description), err.details)
            return
        except ConnectionClosed:
            raise
        except Exception:
            outcome = "InternalError"
            log.exception("handler failed", extra={"pile": self.id, "action": action})
            await self._send_error(uid, "InternalError", f"{action} could not be processed")
            return
        finally:
            metrics.call_received(
                self._ocpp_version,
                action if action in self.known_actions else "_unknown",
                outcome,
                time.perf_counter() - started,
            )
        after = handlers.get("_after_action")
        if after is not None:
            res = after(self, **kwargs)
            if inspect.iscoroutine(res):
                self.spawn(res, f"after-{action}")

    async def _send_error(self, uid: str, code: str, description: str, details: Any = None) -> None:
        try:
            await self._send(_dumps([CALLERROR, uid, code, description[:255], details or {}]))
        except ConnectionClosed:
            pass

    async def _send(self, message: str) -> None:
        await self._connection.send(message)

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run ``coro`` beside the receive loop (never await a call to this pile inside its handler)."""
        task = asyncio.create_task(coro, name=f"{self.id}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("pile task failed", exc_info=exc, extra={"pile": self.id, "task": task.get_name()})

    async def cancel_tasks(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # --------------------------------------------------------------------------------------- calling

    async def call(
        self,
        payload: Any,
        suppress: bool = False,
        unique_id: str | None = None,
        skip_schema_validation: bool = False,
    ) -> dict[str, Any]:
        """Send a CALL (a library ``call.*`` dataclass) and return the pile's answer (camelCase dict).

        Raises InvalidMessage (our payload breaks the schema), TimeoutError, CallErrorReceived,
        ConnectionError."""
        return await self.call_action(type(payload).__name__, to_payload(payload), skip_schema_validation)

    async def call_action(
        self, action: str, body: dict[str, Any], skip_schema_validation: bool = False
    ) -> dict[str, Any]:
        """``call`` with the action name and the camelCase payload."""
        if not skip_schema_validation:
            bad = schema_check(self._ocpp_version, self.codes, CALL, action, body)
            if bad is not None:
                raise bad
        uid = str(self._unique_id_generator())
        fut: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        started = time.perf_counter()
        async with self._call_lock:
            self._pending[uid] = fut
            try:
                await self._send(_dumps([CALL, uid, action, body]))
                async with asyncio.timeout(self._response_timeout):
                    answer = await fut
            except TimeoutError:
                metrics.CALLS_SENT.labels(self._ocpp_version, action, "timeout").inc()
                raise
            except ConnectionClosed as err:
                raise ConnectionError("pile disconnected") from err
            finally:
                self._pending.pop(uid, None)
        metrics.CALL_SENT_SECONDS.labels(self._ocpp_version).observe(time.perf_counter() - started)
        if answer[0] == CALLERROR:
            metrics.CALLS_SENT.labels(self._ocpp_version, action, "callerror").inc()
            raise CallErrorReceived(
                str(answer[2]) if len(answer) > 2 else "GenericError",
                str(answer[3]) if len(answer) > 3 else "",
                answer[4] if len(answer) > 4 else {},
            )
        result = answer[2] if len(answer) > 2 else None
        if not isinstance(result, dict):
            metrics.CALLS_SENT.labels(self._ocpp_version, action, "invalid").inc()
            raise InvalidMessage(self.codes.format_violation, "answer payload is not an object")
        if not skip_schema_validation:
            bad = schema_check(self._ocpp_version, self.codes, CALLRESULT, action, result)
            if bad is not None:
                metrics.CALLS_SENT.labels(self._ocpp_version, action, "invalid").inc()
                raise bad
        metrics.CALLS_SENT.labels(self._ocpp_version, action, "ok").inc()
        return result
