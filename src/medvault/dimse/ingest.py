"""C-STORE requests of concurrent associations written together (issue #19).

A modality sends one instance per C-STORE and waits for its response, so each association alone
gives the write pipeline groups of one: a transaction, a ledger append and their fsyncs per
instance. Several associations of one node (a CT sending on four) arrive at once, though; this
queue hands whatever is waiting from one node to a single :class:`~medvault.archive.StoreSession`
(one index transaction, one ledger append), and answers each request with its own outcome.
Nothing is acknowledged before it is durable, indexed and ledgered, exactly as before; each
instance's store event names its own association's actor.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field

from medvault.archive import Archive, StoreCheck, StoreOutcome
from medvault.ledger.events import Actor

#: At most this many instances or bytes per group (a group is one transaction).
GROUP_INSTANCES = 32
GROUP_BYTES = 64 * 1024**2


@dataclass
class _Request:
    data: bytes
    node: str
    actor: Actor | None
    check: StoreCheck | None
    expect: tuple[str, str] | None
    done: threading.Event = field(default_factory=threading.Event)
    outcome: StoreOutcome | None = None
    error: BaseException | None = None


class StoreQueue:
    """One writer thread for the listener; :meth:`store` blocks its caller until done."""

    def __init__(self, archive: Archive, *, name: str = "medvault-dimse-ingest") -> None:
        self._archive = archive
        self._queue: deque[_Request] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def store(
        self,
        data: bytes,
        *,
        node: str,
        actor: Actor | None,
        check: StoreCheck | None,
        expect: tuple[str, str] | None = None,
    ) -> StoreOutcome:
        """Store one instance, grouped with the waiting requests of the same node; its outcome,
        or the error the write raised. ``expect``: the (SOP Class, SOP Instance) UIDs its
        C-STORE command named."""
        request = _Request(data, node, actor, check, expect)
        with self._cond:
            if self._stopping:
                raise RuntimeError("the DIMSE listener is shutting down")
            self._queue.append(request)
            self._cond.notify()
        request.done.wait()
        if request.error is not None:
            raise request.error
        assert request.outcome is not None
        return request.outcome

    def close(self) -> None:
        """Finish what is queued, then stop the writer thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout=60)

    def _next_group(self) -> list[_Request] | None:
        with self._cond:
            while not self._queue:
                if self._stopping:
                    return None
                self._cond.wait()
            first = self._queue.popleft()
            group, size, rest = [first], len(first.data), deque[_Request]()
            while self._queue:
                item = self._queue.popleft()
                if (
                    item.node == first.node
                    and len(group) < GROUP_INSTANCES
                    and size + len(item.data) <= GROUP_BYTES
                ):
                    group.append(item)
                    size += len(item.data)
                else:
                    rest.append(item)
            self._queue.extendleft(reversed(rest))
            return group

    def _run(self) -> None:
        while (group := self._next_group()) is not None:
            _write(self._archive, group)


def _write(archive: Archive, group: list[_Request]) -> None:
    first = group[0]
    try:
        # One node, one scope check: the same principal for every association of that node.
        session = archive.begin_store(actor=first.actor, may_store=first.check)
        try:
            for request in group:
                session.add(request.data, actor=request.actor, expect=request.expect)
        except BaseException:
            session.abort()
            raise
        outcomes = session.finish()
    except BaseException as exc:
        for request in group:
            request.error = exc
            request.done.set()
        return
    for request, outcome in zip(group, outcomes, strict=True):
        request.outcome = outcome
        request.done.set()
