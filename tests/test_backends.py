"""Both WhatsApp backends on real working stores: the simulated one end to end with the mirror,
and the real neonize client up to its (real) connection failure."""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import new_store
from tests.test_mirror import add_companies
from wapool.clock import ManualClock
from wapool.db.pool import Database
from wapool.store.mirror import Mirror
from wapool.store.verify import verify
from wapool.store.working_store import connect
from wapool.supervisor.session import Session, State
from wapool.whatsapp import events as ev
from wapool.whatsapp.neonize_adapter import NeonizeBackend
from wapool.whatsapp.simulated import Script, SimulatedBackend

pytestmark = pytest.mark.timeout(60)


def _next(events: queue.Queue[ev.WhatsAppEvent], timeout: float = 10) -> ev.WhatsAppEvent:
    return events.get(timeout=timeout)


async def test_simulated_session_pairs_churns_logs_out_and_mirrors(
    db: Database, database_url: str, whatsmeow_template: Path, tmp_path: Path
) -> None:
    add_companies(database_url, "962302")
    path = new_store(whatsmeow_template, tmp_path, "962302")
    events: queue.Queue[ev.WhatsAppEvent] = queue.Queue()
    script = Script(pair_with_qr=True, churn_per_second=200, seed=3,
                    events=[(0.5, ev.LoggedOut("device_removed"))])  # fmt: skip
    client = SimulatedBackend(script).client("962302", path, events.put)
    client.start()
    assert isinstance(_next(events), ev.QrCode)
    paired = _next(events)
    assert isinstance(paired, ev.Paired)
    assert paired.jid.endswith("@s.whatsapp.net")
    assert _next(events) == ev.Connected()
    assert _next(events) == ev.LoggedOut("device_removed")
    assert client.stop(5)
    conn = connect(path)
    written = conn.execute("SELECT count(*) FROM wapool_changelog").fetchone()[0]
    devices = conn.execute("SELECT count(*) FROM whatsmeow_device").fetchone()[0]
    sessions = conn.execute("SELECT count(*) FROM whatsmeow_sessions").fetchone()[0]
    conn.close()
    assert written > 50  # churn reached the change log
    assert (devices, sessions) == (0, 0)  # the logout cascaded
    mirror = Mirror(db)
    mirror.add("962302", path)
    assert await mirror.drain(10)
    assert (await verify(db, path, "962302")).equal
    mirror.close()


@pytest.mark.process  # loading neonize runs ldconfig (python-magic looks for libmagic)
def test_real_neonize_client_fails_to_connect_and_session_backs_off(
    whatsmeow_template: Path, tmp_path: Path
) -> None:
    """No internet here: neonize's real connect fails at once (DNS); wapool reconnects later."""
    path = new_store(whatsmeow_template, tmp_path, "962302")
    events: queue.Queue[ev.WhatsAppEvent] = queue.Queue()
    client = NeonizeBackend().client("962302", path, events.put)
    clock = ManualClock()
    session = Session("962302")
    session.start(clock.monotonic())
    client.start()
    failure = _next(events, 20)
    assert isinstance(failure, ev.ConnectFailed)
    assert "web.whatsapp.com" in failure.reason
    session.on_event(failure, clock.monotonic())
    assert session.state is State.RECONNECTING
    assert session.next_attempt is not None
    assert 0 <= session.next_attempt - clock.monotonic() <= 1.0
    assert client.stop(5)
    with pytest.raises(RuntimeError, match="live connection"):
        client.pair_phone("5511999999999")


def test_get_me_before_connect_is_a_real_go_panic(whatsmeow_template: Path, tmp_path: Path) -> None:
    """The crash workers exist to contain: nothing in Python can catch it."""
    path = new_store(whatsmeow_template, tmp_path, "962302")
    script = textwrap.dedent(
        f"""
        from neonize.client import NewClient
        client = NewClient({str(path)!r}, uuid="wapool-panic")
        try:
            client.get_me()
        except BaseException:
            print("caught")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == -signal.SIGABRT, result.returncode  # exit status 134 in a shell
    assert "caught" not in result.stdout


@pytest.mark.parametrize(
    ("script", "states"),
    [
        ([(0.05, ev.KeepAliveTimeout()), (0.1, ev.Disconnected("keep-alive"))],
         [State.CONNECTED, State.RECONNECTING]),
        ([(0.05, ev.TemporaryBan("101", 60))], [State.CONNECTED, State.BANNED]),
        ([(0.05, ev.StreamReplaced())], [State.CONNECTED, State.STREAM_REPLACED]),
        ([(0.05, ev.ClientOutdated())], [State.CONNECTED, State.CLIENT_OUTDATED]),
        ([(0.05, ev.LoggedOut("401"))], [State.CONNECTED, State.LOGGED_OUT]),
    ],
)  # fmt: skip
def test_scripted_simulated_sessions_drive_the_state_machine(
    whatsmeow_template: Path,
    tmp_path: Path,
    script: list[tuple[float, ev.WhatsAppEvent]],
    states: list[State],
) -> None:
    path = new_store(whatsmeow_template, tmp_path, "962302")
    events: queue.Queue[ev.WhatsAppEvent] = queue.Queue()
    client = SimulatedBackend(Script(churn_per_second=20, events=script, seed=1)).client(
        "962302", path, events.put
    )
    session = Session("962302")
    session.start(0.0)
    client.start()
    seen = []
    for _ in range(len(script) + 2):  # Paired, Connected, then the scripted events
        session.on_event(_next(events), 1.0)
        if not seen or seen[-1] is not session.state:
            seen.append(session.state)
    assert seen == [State.STARTING, *states]  # Paired keeps it starting until Connected
    assert client.stop(5)
