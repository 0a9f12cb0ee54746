"""The node's registry questions (a manifest, a blob's descriptor), carried to the
supernode over the control channel, which answers from what the cluster holds.

The answers are parsed here, a manifest's bytes checked against its digest; anything
that is not a clean answer or a refusal from the registry is ``NotAnswered``, and the
registry proxy then asks the registry itself.
"""

from __future__ import annotations

from typing import Any

from peer.link import LinkError, SupernodeLink, SupernodeUnavailable
from swarmpull.core.fields import ProtocolError
from swarmpull.core.oci import Descriptor
from swarmpull.core.registry_questions import (
    BlobQuestion,
    ManifestAnswer,
    ManifestQuestion,
    NotAnswered,
    RegistryRefused,
    parse_descriptor,
    parse_manifest_answer,
)


class RegistryQuestions:
    def __init__(self, link: SupernodeLink | None, timeout: float) -> None:
        self._link = link
        self._timeout = timeout

    async def manifest(self, question: ManifestQuestion) -> ManifestAnswer:
        return _parsed(parse_manifest_answer, await self._ask("manifest", question.to_json()))

    async def blob_descriptor(self, question: BlobQuestion) -> Descriptor:
        return _parsed(parse_descriptor, await self._ask("blob", question.to_json()))

    async def _ask(self, op: str, body: dict[str, Any]) -> Any:
        if self._link is None:
            raise NotAnswered("no supernode configured")
        try:
            return await self._link.ask(op, body, self._timeout)
        except SupernodeUnavailable as exc:
            raise NotAnswered(str(exc)) from None
        except LinkError as exc:
            if exc.code != "REGISTRY_REFUSED":
                raise NotAnswered(f"{exc.code}: {exc}") from None
            status, code, challenge = (exc.detail.get(k) for k in ("status", "oci_code", "challenge"))
            if not isinstance(status, int) or not 400 <= status < 600 or not isinstance(code, str):
                raise NotAnswered(f"the supernode's refusal does not parse: {exc}") from None
            raise RegistryRefused(
                status, code, str(exc), challenge if isinstance(challenge, str) else None
            ) from None


def _parsed(parse: Any, body: Any) -> Any:
    try:
        return parse(body)
    except ProtocolError as exc:
        raise NotAnswered(f"the supernode's answer does not parse: {exc}") from None
