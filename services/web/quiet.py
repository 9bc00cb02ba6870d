"""uvicorn's Server with a quiet main loop: an idle dashboard wakes once a second, not ten
times (uvicorn's own loop looks at `should_exit` every 0.1 s), and `stop()` ends it at once
from any thread."""

from __future__ import annotations

import asyncio
import contextlib

import uvicorn

# uvicorn refreshes the Date header it sends at every tenth tick of its own 0.1 s loop, so
# ticks this far apart keep that header true to the second.
TICK_SECONDS = 1.0


class QuietServer(uvicorn.Server):
    _loop: asyncio.AbstractEventLoop | None = None
    _stopping: asyncio.Event | None = None

    async def main_loop(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 10) % 864000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), TICK_SECONDS)

    def stop(self) -> None:
        """End the server (gracefully, as `should_exit` does) without waiting for a tick."""
        self.should_exit = True
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop has ended already
                loop.call_soon_threadsafe(stopping.set)
