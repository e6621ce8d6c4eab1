"""A loopback TCP proxy between clients and a broker, to cut and stall connections.

It runs its own event loop in a thread, so the harness can drive it from plain code
while the clients (other processes) talk through it::

    with FaultProxy(broker_port) as proxy:   # clients connect to proxy.port
        proxy.cut()        # abort every connection (clients see a reset)
        proxy.stall(3.0)   # forward nothing for 3 s (connections stay open), then resume

Loopback only: it listens on 127.0.0.1 and connects to 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any

from ..servers import free_port

_CHUNK = 65536


class FaultProxy:
    """Forwards ``127.0.0.1:port`` to ``127.0.0.1:target``; :meth:`cut` and :meth:`stall` it."""

    def __init__(self, target: int, port: int | None = None) -> None:
        self.target = target
        self.port = port or free_port()
        self.cuts = 0
        self.stalls = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._flowing: asyncio.Event | None = None

    def __enter__(self) -> FaultProxy:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _call(self, coro: Coroutine[Any, Any, Any], timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self) -> None:
        """Listen (returns once the port accepts connections)."""
        self._thread.start()
        self._call(self._start())

    async def _start(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    def cut(self) -> None:
        """Abort every open connection, both sides; new connections are accepted."""
        self.cuts += 1
        self._call(self._cut())

    async def _cut(self) -> None:
        for writer in list(self._writers):
            with contextlib.suppress(Exception):
                writer.transport.abort()
        self._writers.clear()

    def stall(self, seconds: float) -> None:
        """Forward no byte for ``seconds`` (connections stay open), then resume by itself.

        Returns at once; :attr:`stalled` tells whether the stall is still on.
        """
        self.stalls += 1
        self._call(self._pause(seconds))

    @property
    def stalled(self) -> bool:
        """Whether a stall is on."""
        return self._flowing is not None and not self._flowing.is_set()

    async def _pause(self, seconds: float) -> None:
        assert self._flowing is not None
        self._flowing.clear()
        asyncio.get_running_loop().call_later(seconds, self._flowing.set)

    def close(self) -> None:
        """Stop listening, drop every connection, stop the thread."""
        if not self._thread.is_alive():
            return
        self._call(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._cut()
        assert self._flowing is not None
        self._flowing.set()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.transport.abort()  # the broker is down: the client sees a reset
            return
        self._writers.update((writer, up_writer))
        await asyncio.gather(
            self._pipe(reader, up_writer, writer),
            self._pipe(up_reader, writer, up_writer),
            return_exceptions=True,
        )
        for w in (writer, up_writer):
            self._writers.discard(w)
            with contextlib.suppress(Exception):
                w.transport.abort()

    async def _pipe(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, src_writer: asyncio.StreamWriter
    ) -> None:
        assert self._flowing is not None
        try:
            while True:
                await self._flowing.wait()
                data = await src.read(_CHUNK)
                if not data:
                    break
                await self._flowing.wait()  # a stall that began while reading holds this too
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            with contextlib.suppress(Exception):
                dst.transport.abort()
            with contextlib.suppress(Exception):
                src_writer.transport.abort()
