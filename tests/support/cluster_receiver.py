"""A recording receiver that also tells, per ``webhook-id``, which POSTs were
answered and which lost their connection before the answer.

Several daemons deliver to one receiver; when one of them is killed with
``kill -9`` while its requests wait for a (delayed) answer, the receiver sees
those connections drop: ``dropped`` names the attempts that were waiting for
their answer in the killed process, which its survivors must make again.

    receiver = CountingReceiver(reactor)
    await receiver.start()
    receiver.behave("/user1", delay=0.1)
    ...
    receiver.answered["<webhook-id>"]   # 200s the daemons received for it
    receiver.dropped                    # webhook-ids whose connection was lost

``client_ports`` keeps the daemon-side port of every POST; ``tcp_ports(pid)``
lists the ports a process holds, so a test can tell which daemon sent what
(over the connections still open when it looks).
"""

from __future__ import annotations

import collections
import os
from pathlib import Path
from typing import Any, Callable

from twisted.python.failure import Failure
from twisted.web.server import Request

from tests.support.receiver import Receiver


class CountingReceiver(Receiver):
    """A ``Receiver`` that counts POSTs per ``webhook-id``: received, answered, dropped."""

    def __init__(self, reactor: Any, interface: str = "127.0.0.1") -> None:
        super().__init__(reactor, interface)
        #: webhook-id -> POSTs received with it
        self.received: collections.Counter[str] = collections.Counter()
        #: webhook-id -> POSTs whose answer was written to the daemon
        self.answered: collections.Counter[str] = collections.Counter()
        #: webhook-ids of POSTs whose connection was lost before the answer
        self.dropped: list[str] = []
        #: webhook-id -> the client (daemon side) port of each POST with it
        self.client_ports: collections.defaultdict[str, list[int]] = collections.defaultdict(list)
        self._when_answered: list[tuple[int, Callable[[], None]]] = []

    def on_answered(self, count: int, action: Callable[[], None]) -> None:
        """Run ``action`` once ``count`` deliveries have been answered, in the
        very callback that answers the last of them (polling would see the
        count only after the reactor has answered many more); at once if
        they already have."""
        if len(self.answered) >= count:
            action()
        else:
            self._when_answered.append((count, action))

    def _answer_post(self, request: Request) -> Any:
        webhook_id = (request.getHeader(b"webhook-id") or b"").decode()
        self.received[webhook_id] += 1
        self.client_ports[webhook_id].append(request.getClientAddress().port)

        def answered(_: object) -> None:
            self.answered[webhook_id] += 1
            due = [item for item in self._when_answered if len(self.answered) >= item[0]]
            for item in due:
                self._when_answered.remove(item)
                item[1]()

        def dropped(_: Failure) -> None:
            self.dropped.append(webhook_id)

        request.notifyFinish().addCallbacks(answered, dropped)
        return super()._answer_post(request)

    def duplicates(self) -> dict[str, int]:
        """webhook-id -> POSTs received, for the ids received more than once."""
        return {webhook_id: count for webhook_id, count in self.received.items() if count > 1}


def tcp_ports(pid: int) -> set[int]:
    """The local ports of the TCP sockets process ``pid`` has open (Linux ``/proc``)."""
    inodes = set()
    for fd in Path("/proc/%d/fd" % (pid,)).iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        path = Path("/proc/%d/net/%s" % (pid, table))
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports
