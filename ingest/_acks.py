"""PUBACKs in receive order, each sent only after Kafka confirmed the message's records.

MQTT 3.1.1 §4.6 (and MQTT 5 §4.6) require acknowledgements for QoS 1 PUBLISHes in the
order the PUBLISHes arrived, but Kafka confirms deliveries per partition, out of
order across partitions. The :class:`OrderedAcker` keeps a FIFO of pending messages and
releases acknowledgements from its head only.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class Pending:
    """One received QoS > 0 message waiting for its Kafka confirmations."""

    __slots__ = ("generation", "mid", "outstanding", "qos", "received_ns", "work")

    def __init__(
        self, mid: int, qos: int, outstanding: int, generation: int, work: object = None
    ) -> None:
        self.mid = mid
        self.qos = qos
        self.outstanding = outstanding
        self.generation = generation
        self.received_ns = time.monotonic_ns()
        # What the owner needs to redo the entry's writes (e.g. after a producer restart).
        self.work = work


class OrderedAcker:
    """FIFO of pending messages; acknowledges the completed prefix in order.

    Args:
        send_acks: Called with the ``(mid, qos)`` pairs released together, in order, to
            send their PUBACKs (or PUBCOMPs); one call per release so they can share a write.
    """

    def __init__(self, send_acks: Callable[[list[tuple[int, int]]], object]) -> None:
        self._send_acks = send_acks
        self._queue: deque[Pending] = deque()
        # Released inside batched(), sent when it ends.
        self._held: list[tuple[int, int]] = []
        self._holding = False
        self.generation = 0
        self.acked = 0

    def __len__(self) -> int:
        """Messages not acknowledged yet (held acknowledgements included)."""
        return len(self._queue) + len(self._held)

    @contextmanager
    def batched(self) -> Iterator[None]:
        """Hold the acknowledgements released inside the block and send them together.

        Serving a poll's delivery reports releases a few messages at a time; held
        together they go out as one write instead of one per report.
        """
        self._holding = True
        try:
            yield
        finally:
            self._holding = False
            if self._held:
                held, self._held = self._held, []
                self._send(held)

    def add(self, mid: int, qos: int, outstanding: int, work: object = None) -> Pending:
        """Track a received message that needs ``outstanding`` Kafka confirmations."""
        entry = Pending(mid, qos, outstanding, self.generation, work)
        self._queue.append(entry)
        if outstanding == 0:
            self._release()
        return entry

    def confirm(self, entry: Pending) -> None:
        """One of the entry's Kafka records was confirmed."""
        entry.outstanding -= 1
        if entry.outstanding <= 0 and entry.generation == self.generation:
            self._release()

    def _release(self) -> None:
        queue = self._queue
        batch = []
        while queue and queue[0].outstanding <= 0:
            entry = queue.popleft()
            batch.append((entry.mid, entry.qos))
        if not batch:
            return
        if self._holding:
            self._held += batch
        else:
            self._send(batch)

    def _send(self, batch: list[tuple[int, int]]) -> None:
        self.acked += len(batch)
        self._send_acks(batch)

    def reset(self) -> int:
        """Forget all pending entries: the connection they arrived on is gone.

        Their packet ids mean nothing on a new connection, so they are never acknowledged;
        the broker redelivers them on the resumed session (their Kafka copies become
        counted duplicates, never losses).

        Returns:
            How many entries were dropped.
        """
        dropped = len(self._queue) + len(self._held)
        self._queue.clear()
        self._held = []
        self.generation += 1
        return dropped

    def unconfirmed(self) -> list[Pending]:
        """Entries of the current connection still waiting for Kafka, oldest first."""
        return [e for e in self._queue if e.outstanding > 0]

    def oldest_age_s(self) -> float:
        """Age of the oldest unacknowledged message, 0 when none."""
        if not self._queue:
            return 0.0
        return (time.monotonic_ns() - self._queue[0].received_ns) / 1e9
