"""Who may see the dashboard: an operator holding the token of ``--ui-token-file``.

Browsers cannot present the cluster's client certificates (nor should operators carry a
node's key), so the dashboard has its own credential: a random token the operator keeps,
shared by every replica. A client proves it either with ``Authorization: Bearer TOKEN``
(scripts, curl) or once through the login form, which answers with a session cookie: an
expiry and an HMAC of it keyed by the token (so the cookie does not hold the token, any
replica can check it, and replacing the token ends every session). Every comparison is
constant-time on equal-length digests. docs/SECURITY.md says why this design.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import stat
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

MIN_TOKEN = 16  # characters: `openssl rand -hex 32` gives 64
MAX_TOKEN = 4096
COOKIE = "swarmpull_ui"
SESSION_SECONDS = 12 * 3600


def check_token(token: str) -> str:
    """``token`` if it is usable, else ValueError saying what a token is."""
    if not MIN_TOKEN <= len(token) <= MAX_TOKEN or not token.isprintable() or " " in token:
        raise ValueError(
            f"the dashboard token must be {MIN_TOKEN} to {MAX_TOKEN} printable characters without "
            "spaces (make one with: openssl rand -hex 32)"
        )
    return token


def read_token(path: Path) -> str:
    """The token in ``path`` (surrounding whitespace ignored); ValueError naming the file
    if it is unreadable or not a usable token. Warns if others may read it."""
    try:
        mode = path.stat().st_mode
        text = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read the dashboard token {path}: {exc}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("%s can be read by others than its owner: chmod 600 it", path)
    try:
        return check_token(text)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


class UiAuth:
    def __init__(
        self,
        token: str,
        *,
        session_seconds: float = SESSION_SECONDS,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        check_token(token)
        self._digest = hashlib.sha256(token.encode()).digest()
        self._key = hashlib.sha256(b"swarmpull-ui-session\0" + token.encode()).digest()
        self.session_seconds = session_seconds
        self._now = wall_clock

    def __repr__(self) -> str:
        return "<UiAuth>"  # never the token

    def token_ok(self, given: str) -> bool:
        """Constant time: the digests compared have the same length whatever was given."""
        given_bytes = given.encode("utf-8", "surrogatepass")  # a header's undecodable bytes too
        return hmac.compare_digest(hashlib.sha256(given_bytes).digest(), self._digest)

    def new_session(self) -> str:
        expires = int(self._now() + self.session_seconds)
        return f"{expires}.{self._mac(expires)}"

    def session_ok(self, cookie: str) -> bool:
        expires, _, mac = cookie.partition(".")
        if not (expires.isascii() and expires.isdigit()) or len(expires) > 12 or int(expires) <= self._now():
            return False
        return hmac.compare_digest(mac.encode(), self._mac(int(expires)).encode())

    def allows(self, authorization: str | None, cookie: str | None) -> bool:
        """A request with this ``Authorization`` header and session cookie may see the data."""
        if authorization is not None:
            scheme, _, given = authorization.partition(" ")
            return scheme.lower() == "bearer" and self.token_ok(given.strip())
        return cookie is not None and self.session_ok(cookie)

    def _mac(self, expires: int) -> str:
        return hmac.new(self._key, f"session:{expires}".encode(), hashlib.sha256).hexdigest()
