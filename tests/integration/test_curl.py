"""The libcurl client on the event loop (dispatcher/curl.py) against the real loopback sink:
keep-alive under concurrency, a cancelled send that frees its handle and its connection, and
close() leaving no socket behind."""

from __future__ import annotations

import asyncio
import socket

import psutil
import pytest

from dispatcher.curl import CurlClient
from tests.support.sink import Reply, Sink


def _open_to(sink: Sink) -> int:
    """This process's TCP connections to the sink that are not closed (the other sockets of
    the test process come and go with other fixtures, so only these are counted)."""
    port = int(sink.url.rsplit(":", 1)[1])
    return sum(
        1
        for c in psutil.Process().net_connections(kind="tcp")
        if c.raddr and c.raddr.port == port and c.status != psutil.CONN_CLOSE
    )


async def test_concurrent_posts_reuse_their_connections(sink: Sink) -> None:
    client = CurlClient(connections=8, body_cap=256)
    try:
        replies = await asyncio.gather(*(
            client.post(f"{sink.url}/k{i}", f'{{"n": {i}}}'.encode(), [f"X-N: {i}"], 5000)
            for i in range(200)
        ))  # fmt: skip
    finally:
        client.close()
    assert [r.status for r in replies] == [200] * 200
    assert sorted(r.body for r in sink.received) == sorted(
        f'{{"n": {i}}}'.encode() for i in range(200)
    )
    assert all(r.headers["X-N"] == r.path[2:] for r in sink.received)


async def test_a_cancelled_send_frees_its_handle_and_connection(sink: Sink) -> None:
    sink.status_for = lambda r: Reply(200, delay=3.0) if r.path == "/slow" else 200
    client = CurlClient(connections=4, body_cap=256)
    slow = asyncio.create_task(client.post(f"{sink.url}/slow", b"{}", [], 10_000))
    while not sink.received:  # noqa: ASYNC110 - the sink has no event to wait on
        await asyncio.sleep(0.01)
    assert _open_to(sink) == 1
    slow.cancel()
    with pytest.raises(asyncio.CancelledError):
        await slow
    assert _open_to(sink) == 0  # the cancelled transfer's connection is closed at once
    replies = await asyncio.gather(*(client.post(f"{sink.url}/ok", b"{}", [], 5000)
                                     for _ in range(10)))  # fmt: skip
    assert [r.status for r in replies] == [200] * 10
    assert 1 <= _open_to(sink) <= 4  # kept alive, within the connection limit
    client.close()
    await asyncio.sleep(0.05)
    assert _open_to(sink) == 0


async def test_a_transfer_past_its_timeout_is_not_connected_only_when_it_never_connected(
    sink: Sink,
) -> None:
    sink.status_for = lambda r: Reply(200, delay=2.0)
    # A listener whose accept queue is full and never drained: Linux drops further SYNs, so a
    # connect to it hangs until the timeout runs out.
    with socket.socket() as full:
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        fillers = [socket.socket() for _ in range(3)]
        for f in fillers:
            f.setblocking(False)
            f.connect_ex(full.getsockname())
        client = CurlClient(connections=2, body_cap=256)
        try:
            slow = await client.post(f"{sink.url}/slow", b"{}", [], 300)
            port = full.getsockname()[1]
            hanging = await client.post(f"http://127.0.0.1:{port}/", b"{}", [], 300)
        finally:
            client.close()
            for f in fillers:
                f.close()
    assert slow.timed_out and slow.status is None and slow.connected
    assert hanging.timed_out and not hanging.connected, hanging


async def test_close_ends_the_transfers_in_flight_and_leaves_no_socket(sink: Sink) -> None:
    sink.status_for = lambda r: Reply(200, delay=3.0)
    client = CurlClient(connections=4, body_cap=256)
    sends = [asyncio.create_task(client.post(f"{sink.url}/s{i}", b"{}", [], 10_000))
             for i in range(3)]  # fmt: skip
    while len(sink.received) < 3:  # noqa: ASYNC110 - the sink has no event to wait on
        await asyncio.sleep(0.01)
    assert _open_to(sink) == 3
    client.close()
    ended = await asyncio.gather(*sends, return_exceptions=True)
    assert all(isinstance(e, asyncio.CancelledError) for e in ended), ended
    await asyncio.sleep(0.05)
    assert _open_to(sink) == 0
