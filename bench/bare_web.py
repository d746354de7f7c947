"""The floor for benchmark 4: a bare twisted.web server on this host.

One ``Resource`` answers every GET or POST with a JSON body of about the
size of a ten-row list page, and twisted.web writes its access log to a
file as the daemon's does.  No routing, no authentication, no database, no
deliveries: what ``bench/api_load.py`` measures against it is what Twisted's
HTTP server alone costs here.

With ``--work-ms X`` each request first does X ms of ordinary interpreter
work (building small dicts and strings, as request handling does), counted
in units whose cost is measured once at start: the same server made to
cost what the daemon costs per request, so that the tail it shows is what
that much work per request alone gives on this host.  It is work, not a
spin on the thread's CPU clock, on purpose: this host has episodes in which
the same Python code runs several times slower (``bench/host_noise.py``),
and a spin on the CPU clock would finish on time through them while the
daemon's code does not.  Prints ``listening PORT`` once ready::

    .venv/bin/python bench/bare_web.py --port 0 --log /tmp/bare_web.log [--work-ms 1.2]
"""

from __future__ import annotations

import argparse
import json

from twisted.internet import endpoints, reactor
from twisted.logger import globalLogBeginner, textFileLogObserver
from twisted.web import resource, server

from host_noise import UNITS_PER_MS_TRIAL, interpreter_work, units_per_ms

PAGE = json.dumps({"triggered_webhooks": [
    {"id": "%036d" % (n,), "registration_id": "%036d" % (n,), "event": "bench.event",
     "timestamp": 1700000000.0 + n} for n in range(10)], "next_start": 10}).encode()


class Page(resource.Resource):
    """Every request: 200 and ``PAGE``, after ``work_units`` of interpreter work."""

    isLeaf = True

    def __init__(self, work_units: int = 0) -> None:
        super().__init__()
        self.work_units = work_units

    def render_GET(self, request: server.Request) -> bytes:
        """The page, as JSON."""
        interpreter_work(self.work_units)
        request.setHeader(b"content-type", b"application/json")
        return PAGE

    render_POST = render_GET


def main() -> None:
    """Listen on loopback until killed."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--log", required=True, help="the access log file")
    parser.add_argument("--work-ms", type=float, default=0.0,
                        help="milliseconds of interpreter work per request (at this host's average speed)")
    arguments = parser.parse_args()
    units = round(arguments.work_ms * units_per_ms(UNITS_PER_MS_TRIAL)) if arguments.work_ms > 0 else 0
    globalLogBeginner.beginLoggingTo([textFileLogObserver(open(arguments.log, "a"))], redirectStandardIO=False)
    endpoint = endpoints.TCP4ServerEndpoint(reactor, arguments.port, interface="127.0.0.1")

    def listening(port: object) -> None:
        print("listening %d" % (port.getHost().port,), flush=True)  # type: ignore[attr-defined]

    endpoint.listen(server.Site(Page(units))).addCallback(listening)
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
