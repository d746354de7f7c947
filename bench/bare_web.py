"""The floor for benchmark 4: a bare twisted.web server on this host.

One ``Resource`` answers every GET or POST with a JSON body of about the
size of a ten-row list page, and twisted.web writes its access log to a
file as the daemon's does.  No routing, no authentication, no database, no
deliveries: what ``bench/api_load.py`` measures against it is what Twisted's
HTTP server alone costs here.

With ``--cpu-ms X`` each request first spins for X ms of this thread's CPU
time: the same server made to cost what the daemon costs per request, so
that the tail it shows is what that much CPU per request alone gives on
this host.  Prints ``listening PORT`` once ready::

    .venv/bin/python bench/bare_web.py --port 0 --log /tmp/bare_web.log [--cpu-ms 1.2]
"""

from __future__ import annotations

import argparse
import json
import time

from twisted.internet import endpoints, reactor
from twisted.logger import globalLogBeginner, textFileLogObserver
from twisted.web import resource, server

PAGE = json.dumps({"triggered_webhooks": [
    {"id": "%036d" % (n,), "registration_id": "%036d" % (n,), "event": "bench.event",
     "timestamp": 1700000000.0 + n} for n in range(10)], "next_start": 10}).encode()


class Page(resource.Resource):
    """Every request: 200 and ``PAGE``, after ``cpu_seconds`` of busy work."""

    isLeaf = True

    def __init__(self, cpu_seconds: float = 0.0) -> None:
        super().__init__()
        self.cpu_seconds = cpu_seconds

    def render_GET(self, request: server.Request) -> bytes:
        """The page, as JSON."""
        if self.cpu_seconds > 0:
            done = time.thread_time() + self.cpu_seconds
            while time.thread_time() < done:
                pass
        request.setHeader(b"content-type", b"application/json")
        return PAGE

    render_POST = render_GET


def main() -> None:
    """Listen on loopback until killed."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--log", required=True, help="the access log file")
    parser.add_argument("--cpu-ms", type=float, default=0.0, help="CPU milliseconds to spin per request")
    arguments = parser.parse_args()
    globalLogBeginner.beginLoggingTo([textFileLogObserver(open(arguments.log, "a"))], redirectStandardIO=False)
    endpoint = endpoints.TCP4ServerEndpoint(reactor, arguments.port, interface="127.0.0.1")

    def listening(port: object) -> None:
        print("listening %d" % (port.getHost().port,), flush=True)  # type: ignore[attr-defined]

    endpoint.listen(server.Site(Page(arguments.cpu_ms / 1000))).addCallback(listening)
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
