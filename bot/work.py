"""Work that runs after Slack's ack: tracked, so shutdown can let it finish."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import structlog

log = structlog.get_logger(__name__)


class ShuttingDown(Exception):
    """Raised by :meth:`InFlight.spawn` once draining has begun."""


UNINSTALLED = "uninstalled"  # the cancel message of work stopped by an uninstall


class InFlight:
    """A set of background tasks (turns, command replies) with a bounded drain.

    A task spawned with a ``tenant`` id can be cancelled with the rest of that tenant's work
    (:meth:`cancel_tenant`, when the app is uninstalled there).
    """

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._tenants: dict[asyncio.Task[Any], str] = {}
        self.draining = False

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(
        self, coro: Coroutine[Any, Any, Any], name: str, tenant: str | None = None
    ) -> asyncio.Task[Any]:
        if self.draining:
            coro.close()
            raise ShuttingDown(name)
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        if tenant is not None:
            self._tenants[task] = tenant
        task.add_done_callback(self._done)
        return task

    def cancel_tenant(self, tenant: str) -> int:
        """Cancel the running tasks spawned for ``tenant``; returns how many."""
        doomed = [task for task, owner in self._tenants.items() if owner == tenant]
        for task in doomed:
            task.cancel(UNINSTALLED)
        return len(doomed)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        self._tenants.pop(task, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("background_task_failed", task=task.get_name(), exc_info=task.exception())

    async def drain(self, grace: float) -> int:
        """Stop accepting work, wait up to ``grace`` seconds, cancel what is left.

        Returns the number of tasks that had to be cancelled.
        """
        self.draining = True
        if not self._tasks:
            return 0
        _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5)
        return len(pending)
