"""Fair shares between daemons: how many leases to take, which companies to hand over. Pure.

Each daemon aims for ``ceil(companies / sharing nodes)`` (the sharing nodes are the live ones
not draining, this one included unless it drains). It takes free leases only up to that share;
it hands companies over when it holds more than its share plus ``slack``, or more than its share
while another sharing node holds less than its share minus ``slack`` (a node that joined or came
back), and then down to the share, a batch at a time: at most ``batch`` leases in transit
(handed over, not yet taken) in the whole cluster, so a taker, which prepares stores one after
the other, never leaves a handed-over company waiting long. A draining
node's share is zero, but it hands nothing over while no other node takes a share. Companies a
``wapool move`` asked for go first, whatever the shares. Which companies go: those whose client
is not connected yet, then the rest, last names first (deterministic).

Taking only free leases makes the shares robust to a heartbeat seen late: a node that briefly
looks dead raises the others' shares, but they only take what nobody holds.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass, field

from wapool.nodes import ClusterView


@dataclass(frozen=True)
class Plan:
    share: int
    #: Leases still to take (before the bring-up's own limit).
    take: int
    #: Company -> node it is reserved for (None: anyone), to hand over now.
    hand_over: dict[str, str | None] = field(default_factory=dict)
    #: More is to be handed over than this round may.
    more: bool = False


def fair_share(companies: int, nodes: int) -> int:
    return math.ceil(companies / max(nodes, 1))


def plan(
    me: str,
    active: int,
    held: Collection[str],
    view: ClusterView,
    *,
    slack: int,
    batch: int,
    not_connected: Collection[str] = (),
) -> Plan:
    sharing = set(view.sharing) - {me} if view.draining else set(view.sharing) | {me}
    share = 0 if view.draining else fair_share(active, len(sharing))
    moves: dict[str, str | None] = {
        c: t for c, t in sorted(view.moves.items()) if c in held and t in sharing and t != me
    }
    excess = 0
    others = sharing - {me}
    starving = any(view.holding.get(n, 0) < share - slack for n in others)
    if others and (view.draining or len(held) > share + slack or starving):
        excess = len(held) - share - len(moves)
    room = max(0, batch - view.in_transit - len(moves))
    ordered = sorted(
        (c for c in held if c not in moves), key=lambda c: (c in not_connected, c), reverse=True
    )
    chosen = ordered[: max(0, min(excess, room))]
    return Plan(
        share=share,
        take=max(0, share - len(held)),
        hand_over=moves | dict.fromkeys(chosen),
        more=excess > len(chosen),
    )
