"""The websocket side: handshake (path, subprotocol, Basic auth against the registry), one ``Pile`` per
connection, and the hub of the piles this node holds (a reconnecting pile replaces its old connection).

Security profile 1 (ws:// + Basic auth) and 2 (wss:// + Basic auth) — the user name must be the pile's
identity. Refusals at the handshake: unknown path 404, unknown pile 404, missing or wrong credentials
401 (with ``WWW-Authenticate``), database unreachable 503. A client offering neither ``ocpp1.6`` nor
``ocpp2.0.1`` gets the handshake completed without a subprotocol and the connection closed at once
(code 1002), as both OCPP-J specifications prescribe.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import os
import re
from collections.abc import Sequence
from http import HTTPStatus
from urllib.parse import unquote

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from core.charging.passwords import verify_password
from core.charging.registry import PileAuth
from core.topics import Channel
from ocpp_server import metrics
from ocpp_server.authcache import AuthCache, RegistryUnavailable
from ocpp_server.pile import Context, Pile
from ocpp_server.v16 import SUBPROTOCOL as V16
from ocpp_server.v16 import Pile16
from ocpp_server.v201 import SUBPROTOCOL as V201
from ocpp_server.v201 import Pile201

log = logging.getLogger(__name__)

SUBPROTOCOLS = [V201, V16]
_PATH_RE = re.compile(r"^/ocpp/([^/?#]+)/?(?:\?.*)?$")
_CLASSES: dict[str, type[Pile]] = {V16: Pile16, V201: Pile201}


class Hub:
    """The piles connected to this node, by OCPP identity and by device key."""

    def __init__(self) -> None:
        self.by_id: dict[str, Pile] = {}
        self.by_key: dict[str, Pile] = {}
        self._auth_cache: dict[str, bytes] = {}  # stored hash -> keyed digest of its verified password
        self._verifying: dict[tuple[str, bytes], asyncio.Future[bool]] = {}
        self._cache_key = os.urandom(32)
        self.ctx: Context | None = None
        self._auths: AuthCache | None = None
        self.departed = 0  # connections ended so far (for the GC policy)

    @property
    def auths(self) -> AuthCache:
        if self._auths is None:
            assert self.ctx is not None
            self._auths = AuthCache(self.ctx.pool, self.ctx.ocpp)
        return self._auths

    def attach(self, pile: Pile) -> Pile | None:
        old = self.by_id.get(pile.id)
        self.by_id[pile.id] = pile
        self.by_key[pile.key] = pile
        return old

    def websockets(self) -> list[ServerConnection]:
        return [pile._connection for pile in self.by_id.values()]

    def detach(self, pile: Pile) -> bool:
        """Forget ``pile``; False when a newer connection of the same pile replaced it."""
        self.departed += 1
        if self.by_id.get(pile.id) is not pile:
            return False
        del self.by_id[pile.id]
        if self.by_key.get(pile.key) is pile:
            del self.by_key[pile.key]
        return True

    # -------------------------------------------------------------------------------------- handshake

    async def _password_ok(self, auth: PileAuth, password: str) -> bool:
        assert auth.password_hash is not None
        # A keyed digest of verified passwords (never the password itself), by stored hash, spares a
        # reconnecting pile the scrypt work; a changed stored hash is a new key. Concurrent checks of the
        # same (hash, password) share one scrypt run.
        tag = hmac.new(self._cache_key, password.encode(), hashlib.sha256).digest()
        cached = self._auth_cache.get(auth.password_hash)
        if cached is not None and hmac.compare_digest(cached, tag):
            return True
        key = (auth.password_hash, tag)
        running = self._verifying.get(key)
        if running is None:
            running = asyncio.ensure_future(asyncio.to_thread(verify_password, password, auth.password_hash))
            self._verifying[key] = running
            running.add_done_callback(lambda _: self._verifying.pop(key, None))
        ok = await asyncio.shield(running)
        if ok:
            if len(self._auth_cache) > 100_000:
                self._auth_cache.clear()
            self._auth_cache[auth.password_hash] = tag
        return ok

    async def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        assert self.ctx is not None
        peer = str(connection.remote_address)
        match = _PATH_RE.match(request.path)
        if match is None:
            return self._refuse(connection, HTTPStatus.NOT_FOUND, "not an OCPP endpoint", None, peer)
        ocpp_id = unquote(match[1])
        user, password = _basic(request.headers.get("Authorization"))
        try:
            auth = await self.auths.get(ocpp_id)
            why = await self._check(auth, ocpp_id, user, password)
            if why is not None and auth is not None and password is not None:  # a stale cached row?
                auth = await self.auths.get(ocpp_id, fresh=True)
                why = await self._check(auth, ocpp_id, user, password)
        except RegistryUnavailable:
            return self._refuse(connection, HTTPStatus.SERVICE_UNAVAILABLE, "try again later", ocpp_id, peer)
        if auth is None:
            return self._refuse(connection, HTTPStatus.NOT_FOUND, "unknown charge point", ocpp_id, peer)
        if why is not None:
            return self._refuse(connection, HTTPStatus.UNAUTHORIZED, why, ocpp_id, peer)
        connection.lishui_auth = auth  # type: ignore[attr-defined]
        return None

    async def _check(
        self, auth: PileAuth | None, ocpp_id: str, user: str | None, password: str | None
    ) -> str | None:
        """None when the credentials fit ``auth`` (or there is no such pile), else why not."""
        if auth is None:
            return None
        if auth.password_hash is None:
            return None if self.ctx is not None and self.ctx.ocpp.allow_no_password else "no password set"
        if user != ocpp_id or password is None or not await self._password_ok(auth, password):
            return "bad credentials"
        return None

    def _refuse(
        self, connection: ServerConnection, status: HTTPStatus, why: str, ocpp_id: str | None, peer: str
    ) -> Response:
        metrics.HANDSHAKES.labels(status.name.lower()).inc()
        log.warning(
            "handshake refused", extra={"pile": ocpp_id, "status": int(status), "reason": why, "peer": peer}
        )
        response = connection.respond(status, f"{why}\n")
        if status is HTTPStatus.UNAUTHORIZED:
            response.headers["WWW-Authenticate"] = 'Basic realm="lishui-ocpp", charset="UTF-8"'
        return response

    # ------------------------------------------------------------------------------------- connection

    async def handler(self, websocket: ServerConnection) -> None:
        assert self.ctx is not None
        auth: PileAuth = websocket.lishui_auth  # type: ignore[attr-defined]
        cls = _CLASSES.get(websocket.subprotocol or "")
        if cls is None:
            metrics.HANDSHAKES.labels("no_subprotocol").inc()
            log.warning("no OCPP subprotocol offered", extra={"pile": auth.ocpp_id})
            await websocket.close(1002, "ocpp1.6 or ocpp2.0.1 required")
            return
        metrics.HANDSHAKES.labels("ok").inc()
        # The handshake's headers (the Basic credential among them) are of no use once the pile is in;
        # kept, they would stay in memory, and in the cyclic collector's walks, as long as the connection.
        for message in (websocket.request, websocket.response):
            if message is not None:
                message.headers.clear()
        pile = cls(self.ctx, auth, websocket)
        old = self.attach(pile)
        if old is not None:
            log.info("pile reconnected: old connection replaced", extra={"pile": pile.key})
            await old._connection.close(1000, "replaced by a new connection")
        metrics.CONNECTIONS.labels(pile.version).inc()
        log.info(
            "pile connected",
            extra={"pile": pile.key, "version": pile.version, "peer": str(websocket.remote_address)},
        )
        cmd_topic = pile.topic(Channel.CMD)
        try:
            await pile.on_connected()
            self.ctx.bus.subscribe(cmd_topic)
            await self._serve(pile, websocket)
        except Exception:
            log.exception("pile connection failed", extra={"pile": pile.key})
        finally:
            metrics.CONNECTIONS.labels(pile.version).dec()
            await pile.cancel_tasks()
            current = self.detach(pile)
            if current:
                self.ctx.bus.unsubscribe(cmd_topic)
            pile.on_disconnected(replaced=not current)
            log.info(
                "pile disconnected",
                extra={"pile": pile.key, "replaced": not current, "code": websocket.close_code},
            )

    @staticmethod
    async def _serve(pile: Pile, websocket: ServerConnection) -> None:
        """The pile's receive loop, which ends when the connection is closed even if a handler is still
        waiting (on the database, say): a closed connection never holds up the node's shutdown."""
        receive = asyncio.ensure_future(pile.start())
        closed = asyncio.ensure_future(websocket.wait_closed())
        try:
            await asyncio.wait({receive, closed}, return_when=asyncio.FIRST_COMPLETED)
            if not receive.done():
                await asyncio.wait({receive}, timeout=2.0)  # let an answer in progress finish
        finally:
            for task in (receive, closed):
                task.cancel()
            await asyncio.gather(receive, closed, return_exceptions=True)


def select_subprotocol(connection: ServerConnection, offered: Sequence[Subprotocol]) -> Subprotocol | None:
    """The first OCPP version the pile offers; None (handshake completed, then closed) for neither."""
    for proto in offered:
        if proto in _CLASSES:
            return proto
    return None


def _basic(header: str | None) -> tuple[str | None, str | None]:
    if not header or not header.lower().startswith("basic "):
        return None, None
    try:
        user, sep, password = base64.b64decode(header[6:].strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None, None
    return (user, password) if sep else (None, None)
