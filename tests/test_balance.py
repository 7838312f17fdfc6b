"""Fair shares: what a daemon takes and hands over, by the numbers (``balance.plan``)."""

from __future__ import annotations

from wapool.balance import fair_share, plan
from wapool.nodes import ClusterView


def _view(holding: dict[str, int], **kwargs: object) -> ClusterView:
    return ClusterView(frozenset(holding), holding=holding, **kwargs)  # type: ignore[arg-type]


def _held(count: int) -> list[str]:
    return [f"c{n:03d}" for n in range(count)]


def test_the_share_is_the_ceiling_of_companies_over_sharing_nodes() -> None:
    assert fair_share(200, 2) == 100
    assert fair_share(7, 2) == 4
    assert fair_share(300, 3) == 100
    assert fair_share(5, 0) == 5


def test_alone_a_node_takes_everything_and_hands_nothing_over() -> None:
    result = plan("one", 200, _held(50), _view({"one": 50}), slack=2, batch=8)
    assert (result.share, result.take, result.hand_over) == (200, 150, {})


def test_a_joining_node_gets_the_excess_a_batch_at_a_time_last_names_first() -> None:
    view = _view({"one": 200, "two": 0})
    result = plan("one", 200, _held(200), view, slack=2, batch=8)
    assert result.share == 100
    assert result.take == 0
    assert list(result.hand_over) == [f"c{n}" for n in range(199, 191, -1)]
    assert result.more
    joiner = plan("two", 200, [], view, slack=2, batch=8)
    assert (joiner.take, joiner.hand_over) == (100, {})


def test_companies_in_transit_hold_the_next_batch_back() -> None:
    view = _view({"one": 200, "two": 0}, in_transit=6)
    assert len(plan("one", 200, _held(200), view, slack=2, batch=8).hand_over) == 2
    view = _view({"one": 200, "two": 0}, in_transit=8)
    result = plan("one", 200, _held(200), view, slack=2, batch=8)
    assert result.hand_over == {}
    assert result.more


def test_within_the_slack_nothing_moves_unless_another_node_is_short() -> None:
    even = _view({"one": 102, "two": 98})
    assert plan("one", 200, _held(102), even, slack=2, batch=8).hand_over == {}
    short = _view({"a": 10, "b": 10, "c": 4})  # c came back: 4 < 8 - 2
    assert len(plan("a", 24, _held(10), short, slack=2, batch=8).hand_over) == 2
    above = _view({"one": 103, "two": 97})
    assert len(plan("one", 200, _held(103), above, slack=2, batch=8).hand_over) == 3


def test_companies_not_connected_go_first() -> None:
    view = _view({"one": 10, "two": 0})
    result = plan("one", 10, _held(10), view, slack=0, batch=2, not_connected={"c001", "c003"})
    assert list(result.hand_over) == ["c003", "c001"]


def test_a_draining_node_hands_everything_over_and_takes_nothing() -> None:
    view = ClusterView(sharing=frozenset({"two"}), draining=True, holding={"two": 0})
    result = plan("one", 10, _held(10), view, slack=2, batch=4)
    assert (result.share, result.take, len(result.hand_over), result.more) == (0, 0, 4, True)


def test_a_draining_node_alone_keeps_its_companies() -> None:
    view = ClusterView(sharing=frozenset(), draining=True)
    assert plan("one", 10, _held(10), view, slack=2, batch=4).hand_over == {}


def test_a_move_goes_to_its_node_whatever_the_shares() -> None:
    view = _view({"one": 5, "two": 5, "three": 5}, moves={"c001": "two", "zzz": "two"})
    result = plan("one", 15, _held(5), view, slack=2, batch=8)
    assert result.hand_over == {"c001": "two"}  # zzz is not ours
    gone = _view({"one": 5}, moves={"c001": "two"})  # the target is not live
    assert plan("one", 15, _held(5), gone, slack=2, batch=8).hand_over == {}
