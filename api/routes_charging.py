"""Charging endpoints under /api/v1/charging: piles and their lifecycle, passwords, id tokens,
violations, transactions, and operator commands routed over MQTT to whichever OCPP node holds the pile."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

import aiomqtt
from fastapi import APIRouter, HTTPException, Path, Query, status
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from api.deps import ConnDep, SettingsDep
from core import mqtt as core_mqtt
from core.charging import registry, sessions
from core.payloads import Command, CommandResult, PayloadError, decode, encode
from core.topics import KEY_PATTERN, SITE_TARGET, Channel, topic

router = APIRouter(prefix="/api/v1/charging", tags=["charging"])

Key = Annotated[str, Path(pattern=f"^{KEY_PATTERN}$")]
OptKey = Annotated[str | None, Query(pattern=f"^{KEY_PATTERN}$")]
Limit = Annotated[int, Query(ge=1, le=1000)]
Offset = Annotated[int, Query(ge=0)]
Action = Literal["approve", "mark_built", "accept", "suspend", "resume", "retire"]


class PileIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key: str = Field(pattern=f"^{KEY_PATTERN}$")
    site: str = Field(pattern=f"^{KEY_PATTERN}$")
    ocpp_id: str | None = Field(None, pattern=r"^[A-Za-z0-9._:-]{1,48}$")
    max_power_w: float | None = Field(None, gt=0, lt=10_000_000)
    speed: Literal["fast", "slow"] = "slow"
    vendor: str | None = Field(None, max_length=100)
    model: str | None = Field(None, max_length=100)
    connectors: int = Field(1, ge=0, le=64)
    password: str | None = Field(None, min_length=8, max_length=64)


class PasswordIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    password: str = Field(min_length=8, max_length=64)


class TokenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    token: str = Field(min_length=1, max_length=36)
    tenant: str | None = Field(None, pattern=f"^{KEY_PATTERN}$")
    valid_until: AwareDatetime | None = None
    blocked: bool = False
    parent: str | None = Field(None, max_length=36)
    token_type: str = Field("ISO14443", max_length=20)


class CommandIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    op: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")
    args: dict[str, Any] = Field(default_factory=dict)
    hold_s: float | None = Field(None, gt=0)
    timeout_s: float = Field(35.0, gt=0, le=120)


class LifecycleOut(BaseModel):
    key: str
    lifecycle: str


def _404(err: Exception) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, str(err))


@router.get("/piles")
async def list_piles(
    conn: ConnDep,
    site: OptKey = None,
    tenant: OptKey = None,
    lifecycle: Annotated[str | None, Query(pattern="^[a-z]{1,16}$")] = None,
    limit: Limit = 200,
    offset: Offset = 0,
) -> list[dict[str, Any]]:
    return await registry.list_piles(
        conn, site=site, tenant=tenant, lifecycle=lifecycle, limit=limit, offset=offset
    )


@router.post("/piles", status_code=status.HTTP_201_CREATED)
async def create_pile(body: PileIn, conn: ConnDep) -> dict[str, Any]:
    try:
        return await registry.add_pile(
            conn,
            body.key,
            body.site,
            ocpp_id=body.ocpp_id,
            max_power_w=body.max_power_w,
            speed=body.speed,
            vendor=body.vendor,
            model=body.model,
            connectors=body.connectors,
            password=body.password,
        )
    except registry.PileExists as err:
        raise HTTPException(status.HTTP_409_CONFLICT, str(err)) from None
    except registry.PileNotFound as err:
        raise HTTPException(422, str(err)) from None
    except ValueError as err:
        raise HTTPException(422, str(err)) from None


@router.get("/piles/{key}")
async def get_pile(key: Key, conn: ConnDep) -> dict[str, Any]:
    try:
        return await registry.get_pile(conn, key)
    except registry.PileNotFound as err:
        raise _404(err) from None


@router.put("/piles/{key}/password", status_code=status.HTTP_204_NO_CONTENT)
async def set_password(key: Key, body: PasswordIn, conn: ConnDep) -> None:
    try:
        await registry.set_password(conn, key, body.password)
    except registry.PileNotFound as err:
        raise _404(err) from None
    except ValueError as err:
        raise HTTPException(422, str(err)) from None


@router.get("/violations")
async def violations(
    conn: ConnDep,
    pile: OptKey = None,
    site: OptKey = None,
    tenant: OptKey = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> list[dict[str, Any]]:
    return await registry.list_violations(
        conn, pile=pile, site=site, tenant=tenant, limit=limit, offset=offset
    )


@router.get("/transactions")
async def transactions(
    conn: ConnDep,
    pile: OptKey = None,
    site: OptKey = None,
    status_: Annotated[Literal["active", "ended"] | None, Query(alias="status")] = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> list[dict[str, Any]]:
    return await sessions.list_transactions(
        conn, pile=pile, site=site, status=status_, limit=limit, offset=offset
    )


@router.get("/tokens")
async def tokens(
    conn: ConnDep, tenant: OptKey = None, limit: Limit = 1000, offset: Offset = 0
) -> list[dict[str, Any]]:
    return await registry.list_tokens(conn, tenant=tenant, limit=limit, offset=offset)


@router.post("/tokens", status_code=status.HTTP_201_CREATED)
async def add_token(body: TokenIn, conn: ConnDep) -> dict[str, Any]:
    try:
        return await registry.add_token(
            conn,
            body.token,
            tenant_key=body.tenant,
            valid_until=body.valid_until,
            blocked=body.blocked,
            parent=body.parent,
            token_type=body.token_type,
        )
    except registry.PileNotFound as err:
        raise HTTPException(422, str(err)) from None
    except ValueError as err:
        raise HTTPException(422, str(err)) from None


async def _send_command(settings: Any, site: str, device: str, body: CommandIn) -> dict[str, Any]:
    cmd = Command(id=uuid.uuid4().hex, op=body.op, args=body.args, hold_s=body.hold_s, requested_by="api")
    root = settings.topic_root
    try:
        async with core_mqtt.client(settings.mqtt, f"lishui-api-cmd-{cmd.id[:12]}") as client:
            await client.subscribe(topic(site, device, Channel.CMD_RESULT, root), qos=1)
            await client.publish(topic(site, device, Channel.CMD, root), encode(cmd), qos=1)
            async with asyncio.timeout(body.timeout_s):
                async for message in client.messages:
                    raw = message.payload if isinstance(message.payload, bytes | str) else b""
                    try:
                        result = decode(CommandResult, raw)
                    except PayloadError:
                        continue
                    if result.id == cmd.id:
                        return result.model_dump(mode="json", exclude_none=True)
    except TimeoutError:
        raise HTTPException(status.HTTP_504_GATEWAY_TIMEOUT, "no OCPP node answered in time") from None
    except aiomqtt.MqttError as err:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"broker unavailable: {err}") from None
    raise HTTPException(status.HTTP_504_GATEWAY_TIMEOUT, "no answer")  # pragma: no cover


@router.post("/piles/{key}/commands")
async def pile_command(key: Key, body: CommandIn, conn: ConnDep, settings: SettingsDep) -> dict[str, Any]:
    """Publish an operator command for the pile and wait for its result (504 when nobody answers)."""
    try:
        pile = await registry.get_pile(conn, key)
    except registry.PileNotFound as err:
        raise _404(err) from None
    return await _send_command(settings, pile["site"], key, body)


@router.post("/piles/{key}/{action}", response_model=LifecycleOut)
async def lifecycle_action(key: Key, action: Action, conn: ConnDep) -> LifecycleOut:
    """Lifecycle transitions; 409 when the pile's current state does not allow the action."""
    try:
        return LifecycleOut(key=key, lifecycle=await registry.transition(conn, key, action))
    except registry.PileNotFound as err:
        raise _404(err) from None
    except registry.IllegalTransition as err:
        raise HTTPException(status.HTTP_409_CONFLICT, str(err)) from None


@router.post("/sites/{site}/limit")
async def site_limit(
    site: Key,
    settings: SettingsDep,
    watts: Annotated[float, Query(ge=0, lt=1e9)],
    valid_until: Annotated[datetime | None, Query()] = None,
    hold_s: Annotated[float | None, Query(gt=0)] = None,
) -> dict[str, Any]:
    """Set a site-level charging limit (divided among the site's sessions by the OCPP nodes)."""
    if valid_until is None and hold_s is None:
        raise HTTPException(422, "valid_until or hold_s required")
    if valid_until is not None and valid_until.tzinfo is None:
        raise HTTPException(422, "valid_until needs a timezone")
    args: dict[str, Any] = {"watts": watts}
    if valid_until is not None:
        args["valid_until"] = valid_until.isoformat()
    body = CommandIn(op="set_site_charging_limit", args=args, hold_s=hold_s, timeout_s=10)
    return await _send_command(settings, site, SITE_TARGET, body)
