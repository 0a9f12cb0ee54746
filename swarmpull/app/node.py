"""The node daemon: the peer daemon, with the registry proxy in front when asked for."""

from __future__ import annotations

from peer.config import PeerConfig
from peer.daemon import PeerDaemon
from registry_proxy.config import ProxyConfig
from registry_proxy.server import RegistryProxy
from swarmpull.core.clock import Clock
from swarmpull.core.events import NO_EVENTS, EventSink
from swarmpull.edges.http import bind


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
        self.proxy = RegistryProxy(proxy, self.peer, clock, self.peer) if proxy is not None else None
        if self.proxy is not None:
            self.peer.registry_login = self.proxy.own_login  # private preheats prove with it

    def __repr__(self) -> str:
        return f"<NodeDaemon {self.peer!r} {self.proxy!r}>"

    async def start(self) -> None:
        # The proxy's address is bound first: one that is taken stops the node before the
        # peer registers anywhere (the peer binds its own before it does).
        sock = bind(self.proxy.config.listen)[0] if self.proxy is not None else None
        try:
            await self.peer.start()
            if self.proxy is not None:
                await self.proxy.start(sock)
        except BaseException:
            if sock is not None:
                sock.close()
            await self.peer.stop()
            raise

    def serving(self) -> str:
        """Where it serves, for the one line that says it is up."""
        peer, parts = self.peer, []
        if peer.address is not None:
            parts.append(f"pieces at {peer.address}")
        if peer.api_url is not None:
            parts.append(f"local API at {peer.api_url}")
        if self.proxy is not None:
            parts.append(f"registry proxy at {self.proxy.url}")
        return f"node {peer.peer_id} serving " + ", ".join(parts)

    async def stop(self) -> None:
        if self.proxy is not None:
            await self.proxy.stop()
        await self.peer.stop()
