"""A worker's sends: one thread per company sends that company's messages in order.

Sends block (neonize waits for WhatsApp's answer; media are uploaded first), so they never run
on the worker's command loop, which must stay free to start and stop clients. A client's
``send`` never raises by contract; anything that still escapes becomes ``uncertain`` (it may
have left), never a retry.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from wapool.observability.redact import describe_error
from wapool.supervisor import protocol
from wapool.whatsapp.port import WhatsAppClient
from wapool.whatsapp.sending import Outcome, SendCommand, SendResult

log = logging.getLogger("wapool.worker")

_Item = tuple[WhatsAppClient, SendCommand | Callable[[], None]] | None


class SendQueues:
    def __init__(self, report: Callable[[bytes], None]) -> None:
        self._report = report
        self._queues: dict[str, queue.SimpleQueue[_Item]] = {}

    def submit(
        self, company: str, client: WhatsAppClient, command: SendCommand | Callable[[], None]
    ) -> None:
        """Queue a send (answered with ``send_result``) or another blocking call of the
        client's (``mark_read``), in order with the company's sends."""
        pending = self._queues.get(company)
        if pending is None:
            pending = self._queues[company] = queue.SimpleQueue()
            threading.Thread(
                target=self._run, args=(company, pending), name=f"send-{company}", daemon=True
            ).start()
        pending.put((client, command))

    def close(self, company: str) -> None:
        """No more sends for ``company``; what is queued still gets its answer."""
        pending = self._queues.pop(company, None)
        if pending is not None:
            pending.put(None)

    def _run(self, company: str, pending: queue.SimpleQueue[_Item]) -> None:
        while (item := pending.get()) is not None:
            client, command = item
            if not isinstance(command, SendCommand):
                self._call(company, command)
                continue
            try:
                result = client.send(command)
            except Exception as exc:
                log.error("send_crashed", extra={"company": company, "error": describe_error(exc)})
                result = SendResult(command.id, Outcome.UNCERTAIN, reason=describe_error(exc))
            self._report(protocol.encode_send_result(company, result))

    def _call(self, company: str, call: Callable[[], None]) -> None:
        try:
            call()
        except Exception as exc:  # reported; a read receipt is not worth a crash
            message = f"mark_read failed: {describe_error(exc)}"
            self._report(protocol.encode("error", company=company, message=message))
