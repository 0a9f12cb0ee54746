"""What went wrong with an upstream registry, in terms a registry client understands."""

from __future__ import annotations


class RegistryError(Exception):
    """The registry did not give what was asked. ``status`` and ``code`` are what to answer
    a registry client (an OCI error code); ``challenge`` is the registry's
    ``WWW-Authenticate`` on a 401. ``outage``: the registry is unreachable, rate-limited or
    failing (429, 5xx), so an answer the cluster already holds may stand in for it;
    ``retry_after`` is how long it asked us to stay away, in seconds."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        challenge: str | None = None,
        outage: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.challenge = challenge
        self.outage = outage
        self.retry_after = retry_after

    @classmethod
    def of_status(
        cls, status: int, what: str, host: str, headers: dict[str, str] | None = None
    ) -> RegistryError:
        """The error for an upstream answer ``status`` about ``what`` (``manifest x``, ``blob y``)."""
        headers = headers or {}
        if status == 404:
            code = "BLOB_UNKNOWN" if what.startswith("blob") else "MANIFEST_UNKNOWN"
            return cls(404, code, f"{what} is not known at {host}")
        if status == 401:
            return cls(
                401, "UNAUTHORIZED", f"{host} wants credentials", challenge=headers.get("WWW-Authenticate")
            )
        if status == 403:
            return cls(403, "DENIED", f"{host} refused {what}")
        outage = status == 429 or status >= 500
        code = "TOOMANYREQUESTS" if status == 429 else "UNKNOWN"
        return cls(
            429 if status == 429 else 502,
            code,
            f"{host} answered {status} for {what}",
            outage=outage,
            retry_after=_seconds(headers.get("Retry-After")),
        )


def _seconds(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None  # an HTTP date: rare from registries; our own back-off applies
