"""libcurl's multi interface driven by the asyncio event loop: the dispatcher's HTTP client.

Chosen on numbers (docs/benchmarks.md, ``python -m bench.clients``): against the same cheap sink
one process with 64 requests in flight sends several times more POSTs per second through
pycurl's CurlMulti than through aiohttp, because libcurl parses and writes HTTP in C and the
Python left per request is a few ``setopt`` calls and one callback.

The glue is libcurl's documented event-driven API (``curl_multi_socket_action``): libcurl says
which sockets to watch (``M_SOCKETFUNCTION``) and when to call it back (``M_TIMERFUNCTION``);
the loop's readers, writers and one timer call ``socket_action``; finished transfers are read
with ``info_read`` and complete their futures. Handles are reused, and the multi handle keeps
the connections alive between requests.

Every connection goes through ``OPENSOCKETFUNCTION`` with the address libcurl resolved and is
about to connect to; a ``guard`` returning a reason refuses it there, so a name that resolves
to a refused address when the timer fires (DNS rebinding) is refused on the very address it
would have reached.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from dataclasses import dataclass

import certifi
import pycurl

__all__ = ["CurlClient", "Guard", "Reply"]

# The reason an address may not be connected to, or None: (the request's URL, address).
Guard = Callable[[str, str], str | None]

_TIMEOUT: int = pycurl.E_OPERATION_TIMEDOUT
_WRITE_ERROR: int = pycurl.E_WRITE_ERROR
_SOCKET_BAD: int = pycurl.SOCKET_BAD
# HTTPS is verified against certifi's bundle (a runtime dependency), not the system's.
_CA_BUNDLE = certifi.where()
_NOT_CONNECTED = frozenset({
    pycurl.E_COULDNT_RESOLVE_HOST, pycurl.E_COULDNT_RESOLVE_PROXY, pycurl.E_COULDNT_CONNECT,
})  # fmt: skip


@dataclass(frozen=True, slots=True)
class Reply:
    """How a request ended: the status (None when no answer came), the start of the body of
    the answer (at most the client's body cap), its Retry-After header, and, for a transfer
    that failed, libcurl's error code and text; ``refused`` is the guard's reason."""

    status: int | None
    excerpt: bytes = b""
    retry_after: str | None = None
    error_code: int = 0
    error: str = ""
    connected: bool = True
    refused: str | None = None

    @property
    def timed_out(self) -> bool:
        """The per-request timeout ran out."""
        return self.error_code == _TIMEOUT


class _Transfer:
    """One reusable easy handle with its callbacks' state."""

    __slots__ = (
        "body", "cap", "curl", "future", "guard", "opened", "refused", "retry_after", "url",
    )  # fmt: skip

    def __init__(self, cap: int, guard: Guard | None) -> None:
        self.cap = cap
        self.guard = guard
        self.body = b""
        self.retry_after: str | None = None
        self.refused: str | None = None
        self.url = ""
        # Sockets made for libcurl, which connects a duplicate of each: closed at the end
        self.opened: list[socket.socket] = []
        self.future: asyncio.Future[Reply] | None = None
        curl = self.curl = pycurl.Curl()
        curl.setopt(pycurl.NOSIGNAL, 1)
        curl.setopt(pycurl.PROXY, "")  # never a proxy from the environment
        curl.setopt(pycurl.FOLLOWLOCATION, 0)  # a redirect is an answer, never followed
        curl.setopt(pycurl.PROTOCOLS, pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS)
        curl.setopt(pycurl.POST, 1)
        curl.setopt(pycurl.DNS_CACHE_TIMEOUT, 30)
        curl.setopt(pycurl.WRITEFUNCTION, self._write)
        curl.setopt(pycurl.HEADERFUNCTION, self._header)
        curl.setopt(pycurl.CAINFO, _CA_BUNDLE)
        if guard is not None:
            curl.setopt(pycurl.OPENSOCKETFUNCTION, self._open_socket)

    def reset(self) -> None:
        for sock in self.opened:
            sock.close()
        self.opened.clear()
        self.body = b""
        self.retry_after = None
        self.refused = None
        self.future = None

    def _write(self, data: bytes) -> int | None:
        room = self.cap - len(self.body)
        if len(data) <= room:
            self.body += data
            return None
        # The cap is reached: keep its start and end the transfer (CURLE_WRITE_ERROR), so a
        # huge or endless body is never read on.
        self.body += data[:room]
        return 0

    def _header(self, line: bytes) -> None:
        if line[:12].lower() == b"retry-after:":
            self.retry_after = line[12:].decode("latin-1").strip()
        elif line[:5] == b"HTTP/":  # a new answer (after a 1xx): its headers only
            self.retry_after = None

    def _open_socket(
        self, purpose: int, address: tuple[int, int, int, tuple[str, int]]
    ) -> socket.socket | int:
        family, socktype, protocol, peer = address
        assert self.guard is not None
        reason = self.guard(self.url, peer[0])
        if reason is not None:
            self.refused = reason
            return _SOCKET_BAD
        sock = socket.socket(family, socktype, protocol)
        self.opened.append(sock)
        return sock


class CurlClient:
    """POSTs through one CurlMulti on the running loop; ``close()`` ends it."""

    def __init__(self, *, connections: int, body_cap: int, guard: Guard | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._cap = body_cap
        self._guard = guard
        self._free: list[_Transfer] = []
        self._active: dict[pycurl.Curl, _Transfer] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._watched: dict[int, int] = {}  # fd -> pycurl.POLL_* being watched
        self._closed = False
        multi = self._multi = pycurl.CurlMulti()
        multi.setopt(pycurl.M_SOCKETFUNCTION, self._on_socket)
        multi.setopt(pycurl.M_TIMERFUNCTION, self._on_timer)
        multi.setopt(pycurl.M_MAX_TOTAL_CONNECTIONS, connections)
        multi.setopt(pycurl.M_MAXCONNECTS, connections)

    async def post(self, url: str, body: bytes, headers: list[str], timeout_ms: int) -> Reply:
        """POSTs ``body`` to ``url`` with ``headers`` ("Name: value" lines)."""
        transfer = self._free.pop() if self._free else _Transfer(self._cap, self._guard)
        curl = transfer.curl
        curl.setopt(pycurl.URL, url)
        curl.setopt(pycurl.POSTFIELDS, body)
        curl.setopt(pycurl.HTTPHEADER, headers)
        curl.setopt(pycurl.TIMEOUT_MS, timeout_ms)
        transfer.url = url
        future: asyncio.Future[Reply] = self._loop.create_future()
        transfer.future = future
        self._active[curl] = transfer
        self._multi.add_handle(curl)
        try:
            return await future
        finally:
            if self._active.pop(curl, None) is not None:  # cancelled before it ended
                self._multi.remove_handle(curl)
            transfer.reset()
            if self._closed:
                curl.close()  # ended by close(): the handle is not needed again
            else:
                self._free.append(transfer)

    def close(self) -> None:
        """Ends every transfer and closes every connection."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for curl, transfer in list(self._active.items()):
            self._multi.remove_handle(curl)
            if transfer.future is not None and not transfer.future.done():
                transfer.future.cancel()
        self._active.clear()
        for fd in list(self._watched):
            self._unwatch(fd)
        for transfer in self._free:
            transfer.curl.close()
        self._free.clear()
        self._multi.close()

    # -- the event loop's side ----------------------------------------------------------

    def _on_socket(self, what: int, fd: int, multi: object, data: object) -> None:
        if what == pycurl.POLL_REMOVE:
            self._unwatch(fd)
            return
        old = self._watched.get(fd, 0)
        loop = self._loop
        reads = what in (pycurl.POLL_IN, pycurl.POLL_INOUT)
        writes = what in (pycurl.POLL_OUT, pycurl.POLL_INOUT)
        was_read = old in (pycurl.POLL_IN, pycurl.POLL_INOUT)
        was_write = old in (pycurl.POLL_OUT, pycurl.POLL_INOUT)
        if reads and not was_read:
            loop.add_reader(fd, self._act, fd, pycurl.CSELECT_IN)
        elif was_read and not reads:
            loop.remove_reader(fd)
        if writes and not was_write:
            loop.add_writer(fd, self._act, fd, pycurl.CSELECT_OUT)
        elif was_write and not writes:
            loop.remove_writer(fd)
        self._watched[fd] = what

    def _unwatch(self, fd: int) -> None:
        old = self._watched.pop(fd, 0)
        if old in (pycurl.POLL_IN, pycurl.POLL_INOUT):
            self._loop.remove_reader(fd)
        if old in (pycurl.POLL_OUT, pycurl.POLL_INOUT):
            self._loop.remove_writer(fd)

    def _on_timer(self, timeout_ms: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if timeout_ms >= 0:
            # Never called back from inside libcurl: the loop runs it, even for 0 ms.
            self._timer = self._loop.call_later(timeout_ms / 1000, self._on_timeout)

    def _on_timeout(self) -> None:
        self._timer = None
        self._act(pycurl.SOCKET_TIMEOUT, 0)

    def _act(self, fd: int, events: int) -> None:
        multi = self._multi
        while multi.socket_action(fd, events)[0] == pycurl.E_CALL_MULTI_PERFORM:
            pass
        while True:
            queued, ended, failed = multi.info_read()
            for curl in ended:
                self._end(curl, 0, "")
            for curl, code, message in failed:
                self._end(curl, code, message)
            if not queued:
                return

    def _end(self, curl: pycurl.Curl, code: int, message: str) -> None:
        self._multi.remove_handle(curl)
        transfer = self._active.pop(curl, None)
        if transfer is None or transfer.future is None or transfer.future.done():
            return
        status = curl.getinfo(pycurl.RESPONSE_CODE) or None
        if code == _WRITE_ERROR and status is not None:
            code, message = 0, ""  # the body cap ended it: the answer is complete enough
        connected = code not in _NOT_CONNECTED and transfer.refused is None
        if code == _TIMEOUT and curl.getinfo(pycurl.REQUEST_SIZE) == 0:
            connected = False  # timed out before any byte of the request was sent
        transfer.future.set_result(Reply(
            status=status if code == 0 else None, excerpt=transfer.body,
            retry_after=transfer.retry_after, error_code=code, error=message,
            connected=connected, refused=transfer.refused,
        ))  # fmt: skip
