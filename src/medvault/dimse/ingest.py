"""C-STORE requests of concurrent associations written together (issue #19).

A modality sends one instance per C-STORE and waits for its response, so each association alone
gives the write pipeline groups of one: a transaction, a ledger append and their fsyncs per
instance. Several associations of one node (a CT sending on four) arrive at once, though; this
queue hands whatever is waiting from one node to a single :class:`~medvault.archive.StoreSession`
(one index transaction, one ledger append), and answers each request with its own outcome. The
writing is done by the requests' own threads, one at a time (see :class:`StoreQueue`).
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
    """Group commit without a writer thread of its own: the caller that finds nobody writing
    writes (its request, and whatever the same node has waiting), the others wait for their
    outcome or for their turn to write (leader/follower). One association alone thus pays no
    hand-off between threads; concurrent ones share a session. :meth:`store` blocks until done."""

    def __init__(self, archive: Archive) -> None:
        self._archive = archive
        self._queue: deque[_Request] = deque()
        self._cond = threading.Condition()
        self._writing = False
        self._stopping = False

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
            while self._writing and not request.done.is_set():
                self._cond.wait()
            leader = not request.done.is_set()
            if leader:
                self._writing = True
        if leader:
            try:
                while not request.done.is_set():
                    group = self._next_group()
                    _write(self._archive, group)
                    with self._cond:
                        self._cond.notify_all()
            finally:
                with self._cond:
                    self._writing = False
                    self._cond.notify_all()  # the next waiting request writes
        if request.error is not None:
            raise request.error
        assert request.outcome is not None
        return request.outcome

    def close(self) -> None:
        """Refuse new requests; wait (at most a minute) for those in hand to be written."""
        with self._cond:
            self._stopping = True
            self._cond.wait_for(lambda: not self._queue and not self._writing, timeout=60)

    def _next_group(self) -> list[_Request]:
        """The oldest request and the waiting ones of its node (the caller is the writer)."""
        with self._cond:
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
