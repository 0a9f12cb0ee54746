"""The registry as the supernode and preheat read it: resolve a tag, fetch a manifest by
digest (verified), HEAD for pull rights, and walk an image to its platform's manifest.

    access = RegistryAccess(session, RegistryOptions(...), clock)
    upstream = access.upstream("ghcr.io")               # scheme, Docker Hub naming
    resolved = await access.resolve(upstream, "team/app", "v1", ACCEPT_ALL, ANONYMOUS)
    manifest = await access.manifest(upstream, "team/app", resolved.descriptor.digest, ...)
    await access.head(upstream, "team/app", "blobs", "sha256:...", Credential.of(header))
    manifests = await access.image(ImageReference.parse("ghcr.io/team/app:v1"), Platform.parse("linux/amd64"))

Every request is made with one ``Credential``: a node's own ``Authorization`` header,
sent as it is and never answered with anybody else's login; nobody's (``ANONYMOUS``: a
bearer challenge gets an anonymous token); or this daemon's own login from
``--registry-auth`` (``OWN``: preheat). A manifest's bytes are returned only once they
hash to their digest. Failures are ``RegistryError``, with ``outage`` set when the
registry is unreachable, rate-limited or failing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aiohttp

from swarmpull.core.clock import Clock
from swarmpull.core.digest import Digest, DigestError
from swarmpull.core.oci import (
    ACCEPT_ALL,
    MAX_MANIFEST,
    Descriptor,
    ImageReference,
    ParsedManifest,
    Platform,
    parse_manifest,
    select_platform,
)
from swarmpull.edges.http import read_at_most
from swarmpull.edges.registry.auth import Authenticator, AuthError, Credentials
from swarmpull.edges.registry.client import RegistryClient
from swarmpull.edges.registry.errors import RegistryError
from swarmpull.edges.registry.options import RegistryOptions
from swarmpull.edges.registry.upstreams import Registries, Upstream


@dataclass(frozen=True, slots=True)
class Credential:
    """Whose pull rights a request uses (see the module's docstring)."""

    header: str | None = field(default=None, repr=False)  # a secret: never logged
    own: bool = False

    @classmethod
    def of(cls, header: str | None) -> Credential:
        return cls(header) if header else ANONYMOUS

    @property
    def key(self) -> str:
        """A key for caches of answers given to this credential (the header hashed)."""
        if self.own:
            return "own"
        if self.header is None:
            return "anonymous"
        return "sha256:" + hashlib.sha256(self.header.encode()).hexdigest()

    @property
    def anonymous(self) -> bool:
        return self.header is None and not self.own


ANONYMOUS = Credential()
OWN = Credential(own=True)


@dataclass(frozen=True, slots=True)
class Manifest:
    """A manifest's bytes, verified against ``descriptor.digest``."""

    descriptor: Descriptor
    data: bytes = field(repr=False)

    def parsed(self) -> ParsedManifest:
        """What it references; RegistryError if it is not a manifest we can read."""
        try:
            return parse_manifest(self.data, self.descriptor.media_type)
        except ValueError as exc:
            raise RegistryError(502, "MANIFEST_INVALID", f"{self.descriptor.digest}: {exc}") from None


@dataclass(frozen=True, slots=True)
class Resolved:
    """A tag's manifest: its descriptor, and its bytes when they had to be fetched (a
    registry that gives no digest to a HEAD)."""

    descriptor: Descriptor
    manifest: Manifest | None = None


class RegistryAccess:
    """Construct with an open session (its connector trusts ``options.ca``)."""

    def __init__(self, session: aiohttp.ClientSession, options: RegistryOptions, clock: Clock) -> None:
        self.options = options
        self._registries = Registries(options.default_registry, options.insecure_registries)
        timeout = options.request_timeout
        self._anonymous_auth = Authenticator(session, Credentials(), clock)
        self._anonymous = RegistryClient(session, self._anonymous_auth, timeout, timeout)
        own = Authenticator(session, Credentials.load(options.credentials), clock)
        self._own = RegistryClient(session, own, timeout, timeout)

    def upstream(self, host: str | None) -> Upstream:
        """The registry ``host`` names (the default registry for None); ValueError."""
        return self._registries.resolve(host)

    async def head(
        self,
        upstream: Upstream,
        name: str,
        kind: str,
        reference: str,
        credential: Credential,
        accept: str = ACCEPT_ALL,
    ) -> Descriptor:
        """A HEAD of a manifest or blob (``kind``: ``manifests`` or ``blobs``) named by its
        digest: it exists, and ``credential`` may pull from the repository."""
        digest, media_type, size = await self._head(upstream, name, kind, reference, credential, accept)
        if digest is None:
            raise RegistryError(502, "UNKNOWN", f"{upstream.host} named no digest for {reference}")
        return Descriptor(digest, media_type, size)

    async def resolve(
        self, upstream: Upstream, name: str, tag: str, accept: str, credential: Credential
    ) -> Resolved:
        """The manifest a tag names now: a HEAD (which registries do not count as a pull),
        or a GET when the HEAD names no digest."""
        digest, media_type, size = await self._head(upstream, name, "manifests", tag, credential, accept)
        if digest is not None:
            return Resolved(Descriptor(digest, media_type, size))
        manifest = await self._get(upstream, name, tag, None, accept, credential)
        return Resolved(manifest.descriptor, manifest)

    async def manifest(
        self, upstream: Upstream, name: str, digest: Digest, accept: str, credential: Credential
    ) -> Manifest:
        """The manifest ``digest`` names, its bytes verified against it."""
        return await self._get(upstream, name, str(digest), digest, accept, credential)

    async def image(
        self, reference: ImageReference, platform: Platform | None, credential: Credential = OWN
    ) -> list[Manifest]:
        """The manifests of an image: the one its tag or digest names and, if that is an
        index (or a Docker manifest list), the manifest for ``platform`` (every
        platform's for None). The layers are in the last ones' ``parsed().blobs``."""
        upstream = self.upstream(reference.host)
        name = reference.name
        if reference.digest is not None:
            top = await self.manifest(upstream, name, reference.digest, ACCEPT_ALL, credential)
        else:
            resolved = await self.resolve(upstream, name, str(reference.tag), ACCEPT_ALL, credential)
            top = resolved.manifest or await self.manifest(
                upstream, name, resolved.descriptor.digest, ACCEPT_ALL, credential
            )
        index = top.parsed()
        if not index.is_index:
            return [top]
        try:
            chosen = list(index.manifests) if platform is None else [select_platform(index, platform)]
        except ValueError as exc:
            raise RegistryError(404, "MANIFEST_UNKNOWN", f"{reference}: {exc}") from None
        return [top, *[await self.manifest(upstream, name, d.digest, ACCEPT_ALL, credential) for d in chosen]]

    def authorization(self, upstream: Upstream, name: str) -> str | None:
        """The header this daemon's own login last got for the repository (preheat hands
        it to the seed, which reads the blobs with it); None when none was needed."""
        return self._own.authorization(upstream, name)

    async def anonymous_authorization(self, url: str, challenge: str) -> str | None:
        """An anonymous token for a blob URL whose registry challenged a request that
        carried no credentials (the seed reading a public image); None for a challenge
        only a login answers."""
        try:
            return await self._anonymous_auth.answer(urlsplit(url).netloc, False, challenge, "")
        except AuthError:
            return None

    # --------------------------------------------------------------- internals

    def _client(self, credential: Credential) -> tuple[RegistryClient, str | None]:
        if credential.own:
            return self._own, None
        return self._anonymous, credential.header

    async def _head(
        self, upstream: Upstream, name: str, kind: str, reference: str, credential: Credential, accept: str
    ) -> tuple[Digest | None, str, int]:
        client, header = self._client(credential)
        what = f"{'manifest' if kind == 'manifests' else 'blob'} {upstream.repository(name)}@{reference}"
        headers = {"Accept": accept} if kind == "manifests" else {}
        resp = await client.send("HEAD", upstream, name, kind, reference, headers=headers, client_auth=header)
        resp.release()
        if resp.status != 200:
            raise RegistryError.of_status(resp.status, what, upstream.host, dict(resp.headers))
        if resp.content_length is None:
            raise RegistryError(502, "UNKNOWN", f"{upstream.host} gave no size for {what}")
        named = _digest(resp.headers.get("Docker-Content-Digest"))
        if ":" in reference:
            asked = _digest(reference)
            if asked is None or (named is not None and named != asked):
                raise RegistryError(502, "UNKNOWN", f"{upstream.host} answered {what} with digest {named}")
            named = asked
        return named, _media_type(resp.headers.get("Content-Type"), b""), resp.content_length

    async def _get(
        self,
        upstream: Upstream,
        name: str,
        reference: str,
        digest: Digest | None,
        accept: str,
        credential: Credential,
    ) -> Manifest:
        client, header = self._client(credential)
        what = f"manifest {upstream.repository(name)}@{reference}"
        resp = await client.send(
            "GET", upstream, name, "manifests", reference, headers={"Accept": accept}, client_auth=header
        )
        try:
            if resp.status != 200:
                raise RegistryError.of_status(resp.status, what, upstream.host, dict(resp.headers))
            data = await read_at_most(resp.content, MAX_MANIFEST)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise RegistryError(502, "UNKNOWN", f"{what}: {exc or type(exc).__name__}", outage=True) from None
        finally:
            resp.release()
        if len(data) > MAX_MANIFEST:
            raise RegistryError(502, "MANIFEST_INVALID", f"{what} is larger than {MAX_MANIFEST} bytes")
        actual = Digest.of(data)
        expected = digest or _digest(resp.headers.get("Docker-Content-Digest")) or actual
        if actual != expected:
            raise RegistryError(502, "MANIFEST_INVALID", f"{what} hashes to {actual}, not {expected}")
        return Manifest(
            Descriptor(actual, _media_type(resp.headers.get("Content-Type"), data), len(data)), data
        )


def _digest(text: str | None) -> Digest | None:
    try:
        return Digest.parse(text) if text else None
    except DigestError:
        return None


def _media_type(content_type: str | None, body: bytes) -> str:
    """The registry's Content-Type, else the manifest's own mediaType."""
    kind = (content_type or "").split(";", 1)[0].strip().lower()
    if kind and kind not in ("application/json", "text/plain", "application/octet-stream"):
        return kind
    try:
        return parse_manifest(body).media_type
    except ValueError:
        return kind or "application/octet-stream"
