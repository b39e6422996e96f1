"""pytest-xdist's ``--dist loadgroup`` scheduler, mended so that a crashed worker never leaves
the run waiting (issue 28).

pytest-xdist 3.8.0 (the newest release) hangs after a worker dies (the kernel's OOM killer,
a segfault, ``os._exit``) under ``--dist loadgroup``: reproduced here with 40 one-second
tests, one of which ends its worker; the run stops at 37 of 40 and waits forever. Its
``LoadScopeScheduling.remove_node`` puts the dead worker's whole workload back on the queue,
the scopes it had finished included; a finished scope becomes an empty work unit, a worker
sent one asks for nothing and never reports back, and once the end of the queue is nothing
but empty units every worker waits for a test that never comes (pytest-xdist issues #1323,
#1327, #1378; fixes merged after 3.8.0). It also reruns the test the worker died on, which
takes the replacement worker down the same way (#1371).

This scheduler, chosen through xdist's own ``pytest_xdist_make_scheduler`` hook, requeues
only scopes with tests left, never the crashed test itself (xdist has already reported it as
failed, naming it), skips any empty unit, and starts a replacement worker with two units (a
worker runs a test only once it knows the next one). ``LMBLOCKS_TEST_STOCK_XDIST=1`` falls
back to xdist's own scheduler, to compare.
"""

from __future__ import annotations

import os

import pytest
from xdist.scheduler import LoadGroupScheduling


class CrashSafeLoadGroupScheduling(LoadGroupScheduling):
    """``LoadGroupScheduling`` whose crash recovery cannot leave a worker waiting."""

    def remove_node(self, node) -> str | None:
        workload = self.assigned_work.pop(node)
        pending = [nodeid for unit in workload.values()
                   for nodeid, done in unit.items() if not done]
        if not pending:
            return None
        crashitem = pending[0]  # a worker runs its units in order: the first unfinished one
        workload[self._split_scope(crashitem)][crashitem] = True  # failed, not run again
        for scope, unit in workload.items():
            if not all(unit.values()):
                self.workqueue[scope] = unit
        for other in self.assigned_work:
            self._reschedule(other)
        return crashitem

    def _assign_work_unit(self, node) -> None:
        while self.workqueue:
            scope, unit = next(iter(self.workqueue.items()))
            if not all(unit.values()):
                break
            del self.workqueue[scope]  # nothing left to run in it
        if not self.workqueue:
            node.shutdown()
            return
        super()._assign_work_unit(node)

    def schedule(self) -> None:
        if self.collection is None:
            super().schedule()
            return
        for node in self.nodes:  # a replacement worker has joined: two units, as at the start
            self._reschedule(node)
            self._reschedule(node)


@pytest.hookimpl(tryfirst=True)
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadgroup" or os.environ.get("LMBLOCKS_TEST_STOCK_XDIST"):
        return None
    return CrashSafeLoadGroupScheduling(config, log)
