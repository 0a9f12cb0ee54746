"""The dashboard's routes on the supernode's API port, under ``/ui/``.

    GET  /ui/              the page (static: it holds no data, so it needs no login)
    GET  /ui/app.js, /ui/app.css
    POST /ui/login         token=... (a form) or {"token": ...}: a session cookie, or 401
    POST /ui/logout
    GET  /ui/api/state     the cluster now, and its history (JSON)
    GET  /ui/api/stream    the same, live: server-sent events (history, then state and
                           point every tick)

Data routes answer 401 without the token or a session (``auth``). Without
``--ui-token-file`` the dashboard is off and every route answers 404 saying so.

Browsers hold no cluster certificate: with mutual TLS on the supernode's port, ``PATHS``
are the ones to leave open to clients without one (``identity_middleware(open_paths=)``,
a server context that asks for client certificates without requiring them); the token
guards them instead.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from aiohttp import web

from supernode.dashboard.auth import COOKIE, MAX_TOKEN, UiAuth
from supernode.dashboard.feed import DashboardFeed, event
from swarmpull.core.fields import ProtocolError
from swarmpull.core.protocol import error_body
from swarmpull.edges.http import json_error, parse_json, read_body

STATIC = Path(__file__).parent / "static"
_FILES = {
    "index.html": "text/html",
    "app.js": "text/javascript",
    "app.css": "text/css",
}
# The page loads nothing but its own files and its own API, and no one may frame it.
_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


PATHS = (
    "/ui",
    "/ui/",
    *(f"/ui/{name}" for name in _FILES if name != "index.html"),
    "/ui/login",
    "/ui/logout",
    "/ui/api/state",
    "/ui/api/stream",
)


class Dashboard:
    def __init__(self, feed: DashboardFeed | None, auth: UiAuth | None) -> None:
        self._feed = feed
        self._auth = auth
        self._files = {name: (STATIC / name).read_bytes() for name in _FILES}

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/ui", self.to_page),
            web.get("/ui/", self.page),
            *(web.get(f"/ui/{name}", self.static) for name in _FILES if name != "index.html"),
            web.post("/ui/login", self.login),
            web.post("/ui/logout", self.logout),
            web.get("/ui/api/state", self.state),
            web.get("/ui/api/stream", self.stream),
        ]

    async def to_page(self, _: web.Request) -> web.StreamResponse:
        raise web.HTTPPermanentRedirect("/ui/")

    async def page(self, request: web.Request) -> web.StreamResponse:
        return self._file("index.html")

    async def static(self, request: web.Request) -> web.StreamResponse:
        return self._file(request.path.removeprefix("/ui/"))

    def _file(self, name: str) -> web.StreamResponse:
        self._on()
        headers = {**_HEADERS, "Content-Type": _FILES[name], "Cache-Control": "no-cache"}
        return web.Response(body=self._files[name], headers=headers)

    async def login(self, request: web.Request) -> web.StreamResponse:
        auth = self._on()
        _same_origin(request)
        try:
            body = await read_body(request, MAX_TOKEN + 128)
        except ProtocolError as exc:  # too large, or too slow
            return _refused(exc.status, exc.code, f"the login: {exc}")
        token = _token_of(body, request.content_type)
        if token is None or not auth.token_ok(token):
            return _refused(401, "UNAUTHENTICATED", "wrong dashboard token")
        resp = web.Response(status=204, headers=_HEADERS)
        resp.set_cookie(
            COOKIE,
            auth.new_session(),
            max_age=int(auth.session_seconds),
            path="/ui/",
            httponly=True,
            samesite="Strict",
            secure=request.secure,
        )
        return resp

    async def logout(self, request: web.Request) -> web.StreamResponse:
        self._on()
        _same_origin(request)
        resp = web.Response(status=204, headers=_HEADERS)
        resp.del_cookie(COOKIE, path="/ui/")
        return resp

    async def state(self, request: web.Request) -> web.StreamResponse:
        feed = self._allowed(request)
        body = {"state": feed.latest, "history": list(feed.history.points)}
        return web.json_response(body, headers={**_HEADERS, "Cache-Control": "no-store"}, dumps=_dumps)

    async def stream(self, request: web.Request) -> web.StreamResponse:
        feed = self._allowed(request)
        page = feed.open_page()
        if page is None:
            return _refused(503, "TOO_MANY_PAGES", "too many dashboards are open at this supernode")
        try:
            resp = web.StreamResponse(
                headers={
                    **_HEADERS,
                    "Content-Type": "text/event-stream",
                    "Cache-Control": "no-store",
                    "X-Accel-Buffering": "no",  # proxies pass each event on at once
                }
            )
            await resp.prepare(request)
            await resp.write(b"retry: 3000\n\n" + feed.welcome())
            while (message := await page.next()) is not None:
                await resp.write(message)
            await resp.write(event("bye", {}))
            return resp
        finally:
            feed.close_page(page)

    def _on(self) -> UiAuth:
        if self._auth is None or self._feed is None:
            raise _error(404, "UI_DISABLED", "the dashboard is off: start the supernode with --ui-token-file")
        return self._auth

    def _allowed(self, request: web.Request) -> DashboardFeed:
        auth = self._on()
        if not auth.allows(request.headers.get("Authorization"), request.cookies.get(COOKIE)):
            challenge = {"WWW-Authenticate": "Bearer"}
            raise _error(401, "UNAUTHENTICATED", "log in with the dashboard token", challenge)
        if self._feed is None:  # a token is set only together with a feed
            raise RuntimeError("the dashboard has a token but no feed")
        return self._feed


def _token_of(body: bytes, content_type: str) -> str | None:
    try:
        text = body.decode()
    except UnicodeDecodeError:
        return None
    if content_type == "application/json":
        try:
            value = parse_json(body)
        except ProtocolError:  # malformed, nested too deeply, numbers past int's limits
            return None
        token = value.get("token") if isinstance(value, dict) else None
        return token if isinstance(token, str) else None
    try:
        values = parse_qs(text, max_num_fields=4).get("token")
    except ValueError:  # more fields than a login form has
        return None
    return values[0] if values else None


def _same_origin(request: web.Request) -> None:
    """A browser says where a form was posted from: only our own page may log in or out."""
    origin = request.headers.get("Origin")
    if origin is None:
        return
    try:
        netloc = urlsplit(origin).netloc
    except ValueError:  # "http://[": no origin of ours
        netloc = None
    if netloc != request.host:
        raise _error(403, "FORBIDDEN", "cross-origin request refused")


def _refused(status: int, code: str, message: str) -> web.Response:
    resp = json_error(status, code, message)
    resp.headers.update(_HEADERS)
    return resp


_ERRORS: dict[int, type[web.HTTPException]] = {
    401: web.HTTPUnauthorized,
    403: web.HTTPForbidden,
    404: web.HTTPNotFound,
}


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.HTTPException:
    body = json.dumps(error_body(code, message))
    headers = {**_HEADERS, **(headers or {})}
    return _ERRORS[status](text=body, content_type="application/json", headers=headers)


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))
