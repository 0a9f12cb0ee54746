"""Serving a manifest to containerd: from what the cluster holds, else straight from the
registry (no supernode, or it could not answer).

Either way a manifest named by digest is served only if its bytes hash to it, and one
from the cluster only if they hash to the digest the cluster names. Media type and
``Docker-Content-Digest`` are kept exactly: containerd resolves with them.
"""

from __future__ import annotations

import aiohttp
from aiohttp import web

from registry_proxy.cluster import ClusterRegistry, ask_cluster
from registry_proxy.errors import OciError
from registry_proxy.paths import DistributionPath
from swarmpull.core.digest import Digest
from swarmpull.core.oci import MAX_MANIFEST
from swarmpull.core.registry_questions import ManifestAnswer, ManifestQuestion
from swarmpull.edges.http import read_at_most
from swarmpull.edges.registry import Upstream
from swarmpull.edges.registry.client import RegistryClient

_PASSED_HEADERS = ("Content-Type", "Docker-Content-Digest", "ETag", "Last-Modified")


async def serve_manifest(
    request: web.Request,
    path: DistributionPath,
    upstream: Upstream,
    client: RegistryClient,
    cluster: ClusterRegistry | None,
) -> web.Response:
    accept = ", ".join(request.headers.getall("Accept", [])) or "*/*"
    client_auth = request.headers.get("Authorization")
    if cluster is not None:
        question = ManifestQuestion(
            upstream.host, path.name, path.reference, accept, request.method == "HEAD"
        )
        answer = await ask_cluster(cluster.manifest, question, client, upstream, client_auth)
        if answer is not None:
            return _from_cluster(path, answer)
    return await _from_registry(request, path, upstream, client, accept, client_auth)


def _from_cluster(path: DistributionPath, answer: ManifestAnswer) -> web.Response:
    descriptor = answer.descriptor
    if path.digest is not None and descriptor.digest != path.digest:
        raise OciError(
            502, "MANIFEST_INVALID", f"the cluster answered {path.reference} with {descriptor.digest}"
        )
    headers = {
        "Content-Type": descriptor.media_type,
        "Docker-Content-Digest": str(descriptor.digest),
        "Content-Length": str(descriptor.size),
    }
    if answer.data is None:
        return web.Response(headers=headers)
    if Digest.of(answer.data) != descriptor.digest:
        raise OciError(
            502, "MANIFEST_INVALID", f"the cluster's manifest does not hash to {descriptor.digest}"
        )
    del headers["Content-Length"]  # set from the body
    return web.Response(body=answer.data, headers=headers)


async def _from_registry(
    request: web.Request,
    path: DistributionPath,
    upstream: Upstream,
    client: RegistryClient,
    accept: str,
    client_auth: str | None,
) -> web.Response:
    resp = await client.send(
        request.method,
        upstream,
        path.name,
        "manifests",
        path.reference,
        headers={"Accept": accept},
        client_auth=client_auth,
    )
    try:
        try:
            body = b"" if request.method == "HEAD" else await read_at_most(resp.content, MAX_MANIFEST)
        except (aiohttp.ClientError, TimeoutError) as exc:  # cut short, or too slow
            raise OciError(
                502, "UNKNOWN", f"upstream manifest {path.reference}: {exc or type(exc).__name__}"
            ) from None
        if len(body) > MAX_MANIFEST:
            raise OciError(502, "MANIFEST_INVALID", f"upstream manifest larger than {MAX_MANIFEST} bytes")
        headers = {k: resp.headers[k] for k in _PASSED_HEADERS if k in resp.headers}
        if resp.status == 401 and "WWW-Authenticate" in resp.headers:
            headers["WWW-Authenticate"] = resp.headers["WWW-Authenticate"]
        if resp.status == 200 and path.digest is not None:
            if request.method == "GET" and (actual := Digest.of(body)) != path.digest:
                raise OciError(
                    502, "MANIFEST_INVALID", f"upstream manifest hashes to {actual}, not {path.reference}"
                )
            headers["Docker-Content-Digest"] = str(path.digest)  # what it was asked, and is
        if request.method == "HEAD" and resp.content_length is not None:
            headers["Content-Length"] = str(resp.content_length)
            return web.Response(status=resp.status, headers=headers)
        return web.Response(status=resp.status, body=body, headers=headers)
    finally:
        resp.release()
