"""A libtorrent session driven from asyncio, without blocking the event loop.

libtorrent runs its own threads (network, disk, hashing) and reports through alerts.
The session writes a byte to a pipe when its alert queue goes from empty to non-empty
(``set_alert_fd``, from its network thread, in C++, without the GIL); the loop watches
the pipe (``add_reader``), drains it and pops every queued alert at once, so no wake-up
is lost. A slow timer pops alerts too, in case a byte ever is, and asks for the
torrents' status (``post_torrent_updates``), which comes back as an alert: a torrent's
progress and byte counts are read from that copy, never with ``torrent_handle.status()``,
a call that waits for libtorrent's network thread (80 us on an idle session on the
2-core machine, longer while that thread is busy). Calls into the session from the loop
are asynchronous requests (``async_add_torrent``, ``remove_torrent``, ``flush_cache``,
``pause``) whose results come back as alerts. The listen port is asked once, at start;
the session's destructor (it waits for the tracker to hear "stopped") runs in a thread.

``TorrentSession`` is the one writer of its torrents' futures; ``Torrent`` is one
torrent in it, awaited for ``finished()``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

import libtorrent as lt

from swarmpull.edges.http import HostPort
from swarmpull.edges.torrent.config import TorrentConfig, session_settings
from swarmpull.edges.torrent.metainfo import Metainfo

log = logging.getLogger(__name__)

POLL_INTERVAL = 0.5  # seconds between alert pops that no wake-up asked for


class TorrentFailed(Exception):
    """libtorrent could not add, write or read a torrent (the message says why)."""


class Torrent:
    """One torrent in a session: its handle, and futures the session resolves."""

    def __init__(self, session: TorrentSession, meta: Metainfo, save_path: Path) -> None:
        self.meta = meta
        self.save_path = save_path
        self.path = save_path / meta.name
        self.hash_failures = 0  # pieces that failed their hash check (a peer sent bad data)
        # From libtorrent's last status update (``TorrentSession.refresh``): bytes verified,
        # payload bytes sent to and received from peers since the torrent was added.
        self.verified = self.uploaded = self.downloaded = 0
        self.on_piece: Callable[[int], None] | None = None
        """Called with each piece's index as it passes libtorrent's hash check."""
        self._session = session
        self.handle: lt.torrent_handle | None = None
        loop = asyncio.get_running_loop()
        self._added: asyncio.Future[None] = loop.create_future()
        self._finished: asyncio.Future[None] = loop.create_future()
        self._flushes: collections.deque[asyncio.Future[None]] = collections.deque()  # one per flush_cache
        self._removed: asyncio.Future[None] = loop.create_future()

    def __repr__(self) -> str:
        return f"<Torrent {self.meta.name} {self.state}>"

    @property
    def state(self) -> str:
        if self._removed.done():
            return "removed"
        if self._finished.done():
            return "failed" if self._finished.exception() else "finished"
        return "running"

    async def finished(self) -> None:
        """Returns once every piece is downloaded and hash-checked; TorrentFailed if
        libtorrent gave up on the torrent (a disk error, say)."""
        await asyncio.shield(self._finished)

    async def flush(self) -> None:
        """Returns once every byte received so far is written to the file (libtorrent
        checks a piece before its bytes reach the file)."""
        if self.handle is None or not self.handle.is_valid():
            return
        flushed = asyncio.get_running_loop().create_future()
        self._flushes.append(flushed)  # libtorrent answers each flush_cache in turn
        self.handle.flush_cache()
        await asyncio.shield(flushed)

    def pause(self) -> None:
        if self.handle is not None and self.handle.is_valid():
            self.handle.pause()

    def resume(self) -> None:
        if self.handle is not None and self.handle.is_valid():
            self.handle.resume()

    def sequential(self, on: bool) -> None:
        """Ask for pieces in order (a client reads the blob as it lands) or rarest first."""
        if self.handle is not None and self.handle.is_valid():
            flag = lt.torrent_flags.sequential_download
            self.handle.set_flags(flag) if on else self.handle.unset_flags(flag)

    def connect(self, host: str, port: int) -> None:
        """Connect to a peer now (tests and benchmarks: no tracker needed)."""
        if self.handle is not None:
            self.handle.connect_peer((host, port))

    def _gone(self, why: TorrentFailed) -> None:
        """Out of the session: nothing more will come of it."""
        self._resolve(self._added, why)  # an add under way when the session stopped
        self._resolve(self._finished, why)
        while self._flushes:
            self._resolve(self._flushes.popleft())
        self._resolve(self._removed)

    def _resolve(self, future: asyncio.Future[None] | None, error: Exception | None = None) -> None:
        if future is not None and not future.done():
            if error is not None:
                future.set_exception(error)
                future.exception()  # retrieved: nobody may be waiting
            else:
                future.set_result(None)


class TorrentSession:
    """Construct, ``await start()``, ``add()`` torrents; ``await stop()`` (safe twice)."""

    def __init__(self, config: TorrentConfig, name: str = "torrents") -> None:
        self.config = config
        self.name = name
        self._session: lt.session | None = None
        self._torrents: dict[lt.torrent_handle, Torrent] = {}
        self._pending: dict[bytes, Torrent] = {}  # added, not yet confirmed
        self._pipe: tuple[int, int] | None = None
        self._poller: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._updated: asyncio.Future[None] | None = None  # the next status update
        self.listen: HostPort | None = None

    def __repr__(self) -> str:
        return f"<TorrentSession {self.name} {self.listen} torrents={len(self._torrents)}>"

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        session = self._session = lt.session(session_settings(self.config))
        read_end, write_end = os.pipe()
        os.set_blocking(read_end, False)
        os.set_blocking(write_end, False)
        self._pipe = (read_end, write_end)
        session.set_alert_fd(write_end)
        self._loop.add_reader(read_end, self._on_readable)
        self._poller = asyncio.create_task(self._poll(), name=f"{self.name}-alerts")
        port = session.listen_port()
        if not port:
            await self.stop()
            raise TorrentFailed(f"libtorrent could not listen on {self.config.listen}")
        self.listen = HostPort((self.config.listen or HostPort("127.0.0.1", 0)).host, port)

    async def stop(self) -> None:
        # From here no alert is handled (``_drain`` needs the session): what is under
        # way, an add included, fails now, whatever libtorrent answers meanwhile.
        session, self._session = self._session, None
        for torrent in [*self._torrents.values(), *self._pending.values()]:
            torrent._gone(TorrentFailed("the session stopped"))
        self._torrents.clear()
        self._pending.clear()
        if self._updated is not None and not self._updated.done():
            self._updated.set_result(None)  # the figures stay as last updated
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
            self._poller = None
        if session is not None:
            session.pause()
            holder = [session]
            del session
            # The destructor waits (up to stop_tracker_timeout) for "stopped" announces,
            # which may go to a tracker on this very loop: never on the loop.
            await asyncio.to_thread(holder.clear)
        if self._pipe is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._pipe[0])
            for fd in self._pipe:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._pipe = None

    # ----------------------------------------------------------------- torrents

    async def add(
        self,
        meta: Metainfo,
        save_path: Path,
        *,
        seed: bool = False,
        trackers: list[str] | None = None,
        paused: bool = False,
        have: list[bool] | None = None,
        sequential: bool = False,
        on_piece: Callable[[int], None] | None = None,
    ) -> Torrent:
        """Add a torrent whose file is (or will be) ``save_path / meta.name``. ``seed``:
        the file is complete and verified already (libtorrent checks each piece the first
        time it sends it, not the whole file up front). ``have``: the torrent's pieces
        the file holds, checked already (nothing is read up front; the others are
        fetched). Without either, what is on disk is checked first. ``sequential``:
        pieces in order (``Torrent.sequential``). ``on_piece``: ``Torrent.on_piece``, set
        before any piece can pass."""
        session = self._require()
        if meta.info_hash in self._pending or any(
            t.meta.info_hash == meta.info_hash for t in self._torrents.values()
        ):
            raise TorrentFailed(f"{meta.name} is in the session already")
        params = lt.load_torrent_buffer(meta.data)
        params.save_path = str(save_path)
        flags = params.flags & ~lt.torrent_flags.auto_managed  # never queued behind others
        flags &= ~lt.torrent_flags.paused
        if paused:
            flags |= lt.torrent_flags.paused
        flags |= lt.torrent_flags.disable_dht | lt.torrent_flags.disable_lsd | lt.torrent_flags.disable_pex
        if seed:
            flags |= lt.torrent_flags.seed_mode
        elif have is not None:
            params.have_pieces = have
        if sequential:
            flags |= lt.torrent_flags.sequential_download
        params.flags = flags
        params.trackers = list(trackers or [])
        torrent = Torrent(self, meta, save_path)
        torrent.on_piece = on_piece
        self._pending[meta.info_hash] = torrent  # until libtorrent answers (``_dispatch``)
        session.async_add_torrent(params)
        try:
            await asyncio.shield(torrent._added)
        except asyncio.CancelledError:
            # libtorrent adds it all the same: it must not go on writing the file unseen.
            # The caller ends only once it is out again (cancelled twice: it goes on alone).
            undo = asyncio.get_running_loop().create_task(self._undo(torrent))
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(undo)
            raise
        return torrent

    async def _undo(self, torrent: Torrent) -> None:
        """Take out a torrent whose add was cancelled, once libtorrent confirmed it."""
        with contextlib.suppress(TorrentFailed):
            await asyncio.shield(torrent._added)
            await self.remove(torrent)

    async def remove(self, torrent: Torrent) -> None:
        """Take a torrent out of the session; returns once libtorrent let go of its file."""
        handle = torrent.handle
        if self._session is None or handle is None or torrent._removed.done():
            return
        self._session.remove_torrent(handle)
        torrent._resolve(torrent._finished, TorrentFailed("removed"))
        await asyncio.shield(torrent._removed)

    def torrents(self) -> list[Torrent]:
        return list(self._torrents.values())

    async def refresh(self) -> None:
        """Returns once the torrents' figures (``verified``, ``uploaded``, ``downloaded``)
        are from a status update asked for now (or just before, by the timer)."""
        if self._updated is None or self._updated.done():
            self._updated = asyncio.get_running_loop().create_future()
            self._require().post_torrent_updates()
        await asyncio.shield(self._updated)

    def set_limits(self, upload: int | None, download: int | None) -> None:
        """Change the session's rates (bytes per second, None: no limit)."""
        self._require().apply_settings(
            {"upload_rate_limit": upload or 0, "download_rate_limit": download or 0}
        )

    # ------------------------------------------------------------------- alerts

    def _require(self) -> lt.session:
        if self._session is None:
            raise TorrentFailed("the torrent session is not running")
        return self._session

    def _on_readable(self) -> None:
        if self._pipe is None:
            return
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(self._pipe[0], 4096):
                pass
        self._drain()

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(POLL_INTERVAL)
            self._drain()
            if self._session is not None and self._torrents:
                self._session.post_torrent_updates()  # answered by a state_update_alert

    def _drain(self) -> None:
        if self._session is None:
            return
        for alert in self._session.pop_alerts():
            try:
                self._dispatch(alert)
            except Exception:  # a surprise in one alert must not stop the others
                log.exception("%s: handling %s failed", self.name, type(alert).__name__)

    def _status(self, updates: list[lt.torrent_status]) -> None:
        """The torrents whose status changed since the last update (the others' did not)."""
        for status in updates:
            torrent = self._torrents.get(status.handle)
            if torrent is None:
                continue
            torrent.verified = int(status.total_wanted_done)
            torrent.uploaded = int(status.total_payload_upload)
            torrent.downloaded = int(status.total_payload_download)
            if status.is_seeding:  # every piece checked, should a finished alert be lost
                torrent._resolve(torrent._finished)
        if self._updated is not None and not self._updated.done():
            self._updated.set_result(None)

    def _dispatch(self, alert: lt.alert) -> None:
        if isinstance(alert, lt.add_torrent_alert):
            key = alert.params.ti.info_hashes().v2.to_bytes() if alert.params.ti else b""
            torrent = self._pending.pop(key, None)
            if torrent is None:
                if not alert.error.value() and self._session is not None:
                    self._session.remove_torrent(alert.handle)  # nobody added it: never run unseen
                return
            if alert.error.value():
                torrent._resolve(torrent._added, TorrentFailed(alert.error.message()))
                return
            torrent.handle = alert.handle
            self._torrents[alert.handle] = torrent
            torrent._resolve(torrent._added)  # a complete file: torrent_finished_alert follows
            return
        if isinstance(alert, lt.state_update_alert):
            self._status(alert.status)
            return
        torrent = self._torrents.get(alert.handle) if isinstance(alert, lt.torrent_alert) else None
        if torrent is None:
            if isinstance(alert, lt.listen_failed_alert):
                log.warning("%s: %s", self.name, alert.message())
            return
        if isinstance(alert, lt.piece_finished_alert):
            if torrent.on_piece is not None:
                torrent.on_piece(alert.piece_index)
        elif isinstance(alert, lt.torrent_finished_alert):
            torrent._resolve(torrent._finished)
        elif isinstance(alert, lt.hash_failed_alert):
            torrent.hash_failures += 1
            log.warning(
                "%s: %s piece %d failed its hash check", self.name, torrent.meta.name, alert.piece_index
            )
        elif isinstance(alert, lt.cache_flushed_alert):
            if torrent._flushes:
                torrent._resolve(torrent._flushes.popleft())
        elif isinstance(alert, lt.torrent_removed_alert):
            self._torrents.pop(alert.handle, None)
            torrent._gone(TorrentFailed("removed"))
        elif isinstance(alert, lt.torrent_error_alert | lt.file_error_alert):
            log.warning("%s: %s: %s", self.name, torrent.meta.name, alert.message())
            torrent._resolve(torrent._finished, TorrentFailed(alert.message()))
        elif isinstance(alert, lt.tracker_error_alert):
            log.info("%s: %s", self.name, alert.message())
