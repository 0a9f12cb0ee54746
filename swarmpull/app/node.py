"""The node daemon: the peer daemon, with the registry proxy in front when asked for."""

from __future__ import annotations

from peer.config import PeerConfig
from peer.daemon import PeerDaemon
from registry_proxy.config import ProxyConfig
from registry_proxy.server import RegistryProxy
from swarmpull.core.clock import Clock
from swarmpull.core.events import NO_EVENTS, EventSink


class NodeDaemon:
    """``start()`` the peer, then the proxy pulling blobs through it; ``stop()`` both."""

    def __init__(
        self,
        peer: PeerConfig,
        proxy: ProxyConfig | None,
        clock: Clock | None = None,
        events: EventSink = NO_EVENTS,
    ) -> None:
        self.peer = PeerDaemon(peer, clock, events)
        self.proxy = RegistryProxy(proxy, self.peer, clock) if proxy is not None else None

    def __repr__(self) -> str:
        return f"<NodeDaemon {self.peer!r} {self.proxy!r}>"

    async def start(self) -> None:
        await self.peer.start()
        if self.proxy is not None:
            try:
                await self.proxy.start()
            except BaseException:
                await self.peer.stop()
                raise

    async def stop(self) -> None:
        if self.proxy is not None:
            await self.proxy.stop()
        await self.peer.stop()
