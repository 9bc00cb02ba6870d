"""The chunk server's connection slots: caps in all and per address, and refusals logged
once a while per host."""

from __future__ import annotations

from p2pshare.services.server.slots import REFUSAL_LOG_SECONDS, ConnectionSlots


def test_one_address_takes_at_most_its_share() -> None:
    slots = ConnectionSlots(total=10, per_address=3)
    assert [slots.take("10.0.0.2") for _ in range(3)] == [None] * 3
    refused = slots.take("10.0.0.2")
    assert refused is not None and "10.0.0.2" in refused
    assert slots.take("10.0.0.3") is None  # another host is not affected
    slots.give_back("10.0.0.2")
    assert slots.take("10.0.0.2") is None


def test_the_cap_in_all_holds_across_addresses() -> None:
    slots = ConnectionSlots(total=4, per_address=3)
    for address in ("a", "a", "b", "c"):
        assert slots.take(address) is None
    assert slots.take("d") == "server busy (4 connections open)"
    slots.give_back("b")
    assert slots.take("d") is None
    assert slots.open == 4 and "b" not in slots.held


def test_refusals_are_logged_once_a_while_with_their_count() -> None:
    slots = ConnectionSlots()
    assert slots.refusal_to_log("h", now=0.0) == 1
    assert [slots.refusal_to_log("h", now=t) for t in (1.0, 2.0, 3.0)] == [None] * 3
    assert slots.refusal_to_log("other", now=4.0) == 1
    assert slots.refusal_to_log("h", now=REFUSAL_LOG_SECONDS + 1) == 4
