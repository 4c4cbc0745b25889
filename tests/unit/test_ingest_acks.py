"""PUBACKs go out in receive order, only for confirmed messages."""

from __future__ import annotations

import random

import pytest

from ingest._acks import OrderedAcker

pytestmark = pytest.mark.unit


def test_out_of_order_confirmations_ack_in_receive_order() -> None:
    sent: list[tuple[int, int]] = []
    acker = OrderedAcker(sent.extend)
    entries = [acker.add(mid, 1, 1) for mid in (10, 11, 12)]
    acker.confirm(entries[2])
    acker.confirm(entries[1])
    assert sent == []  # 10 is not confirmed yet
    acker.confirm(entries[0])
    assert sent == [(10, 1), (11, 1), (12, 1)]
    assert len(acker) == 0


def test_entry_with_several_records_waits_for_all() -> None:
    sent: list[int] = []
    acker = OrderedAcker(lambda batch: sent.extend(mid for mid, _qos in batch))
    entry = acker.add(1, 1, 2)
    acker.confirm(entry)
    assert sent == []
    acker.confirm(entry)
    assert sent == [1]


def test_no_records_acks_immediately_in_order() -> None:
    sent: list[int] = []
    acker = OrderedAcker(lambda batch: sent.extend(mid for mid, _qos in batch))
    first = acker.add(1, 1, 1)
    acker.add(2, 1, 0)
    assert sent == []
    acker.confirm(first)
    assert sent == [1, 2]


def test_reset_drops_entries_of_the_old_connection() -> None:
    sent: list[int] = []
    acker = OrderedAcker(lambda batch: sent.extend(mid for mid, _qos in batch))
    old = acker.add(1, 1, 1)
    assert acker.reset() == 1
    acker.confirm(old)  # confirmed after reconnect: must not be acked on the new connection
    new = acker.add(1, 1, 1)
    acker.confirm(new)
    assert sent == [1]
    assert acker.acked == 1


@pytest.mark.parametrize("seed", range(5))
def test_random_confirmation_order_always_acks_a_prefix(seed: int) -> None:
    rng = random.Random(seed)
    sent: list[int] = []
    acker = OrderedAcker(lambda batch: sent.extend(mid for mid, _qos in batch))
    entries = [acker.add(i, 1, rng.randint(1, 3)) for i in range(200)]
    confirmations = [e for e in entries for _ in range(e.outstanding)]
    rng.shuffle(confirmations)
    for entry in confirmations:
        acker.confirm(entry)
        assert sent == list(range(len(sent)))
    assert sent == list(range(200))


def test_batched_releases_go_out_together_at_the_end_in_order() -> None:
    calls: list[list[int]] = []
    acker = OrderedAcker(lambda batch: calls.append([mid for mid, _qos in batch]))
    entries = [acker.add(mid, 1, 1) for mid in range(6)]
    with acker.batched():
        for entry in (entries[1], entries[0], entries[2], entries[4]):
            acker.confirm(entry)
        assert calls == []
        assert len(acker) == 3 + 3  # held acknowledgements are not sent yet
    assert calls == [[0, 1, 2]]
    # Released outside a batch: sent at once, after anything held.
    acker.confirm(entries[3])
    assert calls == [[0, 1, 2], [3, 4]]
    assert acker.acked == 5


def test_reset_forgets_held_acknowledgements() -> None:
    sent: list[int] = []
    acker = OrderedAcker(lambda batch: sent.extend(mid for mid, _qos in batch))
    entry = acker.add(1, 1, 1)
    with acker.batched():
        acker.confirm(entry)
        assert acker.reset() == 1
    assert sent == []
