"""Operator commands (version-free): a ``Command`` from a pile's ``cmd`` topic is carried out on the pile
holding connection and answered once on ``cmd/result``.

- ``accepted``: the pile answered (its payload is in ``response``; read its ``status`` for Accepted or
  Rejected — the server does not second-guess the pile);
- ``rejected``: unknown op for the pile's OCPP version, or args that break the action's JSON schema
  (nothing was sent);
- ``failed``: the pile did not answer in time (``detail: "timeout"``), answered with a CALLERROR, or
  disconnected;
- ``expired``: arrived after ``expires_at``.

``args`` are the OCPP request payload with the version's own (camelCase) field names, plus a few
conveniences (1.6 ``send_local_list`` without a list sends the tenant's tokens from the database;
2.0.1 ``remote_start`` takes ``idToken`` as a plain string).
"""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from core.payloads import Command, CommandResult, CommandStatus, utcnow
from ocpp_server import metrics
from ocpp_server.rpc import CallErrorReceived, InvalidMessage

if TYPE_CHECKING:
    from ocpp_server.pile import Pile

log = logging.getLogger(__name__)

# The charging profile id of the site-limit profile (one per pile, replaced on every re-division).
SITE_PROFILE_ID = int(os.environ.get("LISHUI_OCPP_SITE_PROFILE_ID", "900001"))


def site_profile_id() -> int:
    return SITE_PROFILE_ID


def iso(ts: datetime) -> str:
    """OCPP date-time: UTC with a Z and milliseconds."""
    return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def run_command(pile: Pile, cmd: Command) -> CommandResult:
    from ocpp_server.pile import UnknownOp

    if cmd.expires_at is not None and cmd.expires_at <= utcnow():
        result = CommandResult(id=cmd.id, status=CommandStatus.EXPIRED, detail="expired before it was sent")
    else:
        try:
            answer = await pile.execute(cmd.op, dict(cmd.args))
            result = CommandResult(
                id=cmd.id,
                status=CommandStatus.ACCEPTED,
                response=answer,
                detail=str(answer.get("status")) if "status" in answer else None,
            )
        except UnknownOp as err:
            result = CommandResult(id=cmd.id, status=CommandStatus.REJECTED, detail=str(err))
        except InvalidMessage as err:
            result = CommandResult(
                id=cmd.id, status=CommandStatus.REJECTED, detail=f"invalid args: {err.description}"
            )
        except (ValueError, TypeError) as err:
            result = CommandResult(id=cmd.id, status=CommandStatus.REJECTED, detail=f"invalid args: {err}")
        except TimeoutError:
            result = CommandResult(id=cmd.id, status=CommandStatus.FAILED, detail="timeout")
        except CallErrorReceived as err:
            result = CommandResult(
                id=cmd.id, status=CommandStatus.FAILED, detail=f"{err.code}: {err.description}"
            )
        except ConnectionError as err:
            result = CommandResult(id=cmd.id, status=CommandStatus.FAILED, detail=str(err))
    metrics.COMMANDS.labels(cmd.op, result.status.value).inc()
    log.info(
        "command",
        extra={
            "pile": pile.key,
            "op": cmd.op,
            "id": cmd.id,
            "status": result.status.value,
            "detail": result.detail,
        },
    )
    return result
