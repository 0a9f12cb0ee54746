"""OCI distribution errors: the JSON body every registry client understands."""

from __future__ import annotations

import json

from aiohttp import web

from swarmpull.edges.registry import RegistryError


class OciError(Exception):
    """An error to answer as ``{"errors": [{"code", "message", "detail"}]}``."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.headers = headers or {}

    @classmethod
    def of(cls, exc: RegistryError) -> OciError:
        """What the client hears when the registry failed us."""
        return cls(
            exc.status, exc.code, str(exc), {"WWW-Authenticate": exc.challenge} if exc.challenge else None
        )

    def response(self) -> web.Response:
        body = {"errors": [{"code": self.code, "message": str(self), "detail": None}]}
        return web.Response(
            status=self.status,
            body=json.dumps(body).encode(),
            content_type="application/json",
            headers=self.headers,
        )


def name_invalid(name: str) -> OciError:
    return OciError(400, "NAME_INVALID", f"invalid repository name {name!r}")


def digest_invalid(text: str, why: str) -> OciError:
    return OciError(400, "DIGEST_INVALID", f"invalid digest {text!r}: {why}")


def unsupported(message: str) -> OciError:
    return OciError(405, "UNSUPPORTED", message)
