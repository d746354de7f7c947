"""A real webhook receiver for tests: a twisted.web server on 127.0.0.1.

It answers what a PyWebhooks endpoint must answer:

- ``GET ?echo=X``   -> 200 ``{"echo": "X"}`` (unless ``echo_ok`` is False);
- ``GET ?api_key=K`` / ``?secret_key=K`` -> ``key_status`` (200) ``{}``, and
  remembers the key in ``keys``;
- ``POST``          -> records the delivery (path, headers, body) and answers
  the status configured for that path (200 ``{}`` by default), optionally
  after a delay.

Use it in-process::

    receiver = Receiver(reactor)
    await receiver.start()
    url = receiver.url("/account/endpoint")
    ...
    await receiver.stop()

or as a process: ``python -m tests.support.receiver --port 9090``.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site


@dataclasses.dataclass
class ReceivedPost:
    """One POST the receiver got."""

    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        """The body decoded as JSON."""
        return json.loads(self.body)


@dataclasses.dataclass
class PathBehaviour:
    """How the receiver answers POSTs on one path."""

    status: int = 200
    delay: float = 0.0
    body: bytes = b"{}"


class _Handler(Resource):
    isLeaf = True

    def __init__(self, receiver: Receiver) -> None:
        super().__init__()
        self._receiver = receiver

    def render_GET(self, request: Request) -> bytes:
        return self._receiver._answer_get(request)

    def render_POST(self, request: Request) -> Any:
        return self._receiver._answer_post(request)


class Receiver:
    """A recording webhook endpoint on a free loopback port."""

    def __init__(self, reactor: Any, interface: str = "127.0.0.1") -> None:
        self._reactor = reactor
        self._interface = interface
        self._port: IListeningPort | None = None
        self.echo_ok = True
        self.key_status = 200
        self.gets: list[dict[str, str]] = []
        self.keys: dict[str, str] = {}
        self.posts: list[ReceivedPost] = []
        self._behaviours: dict[str, PathBehaviour] = {}
        self._waiters: list[tuple[int, Deferred[list[ReceivedPost]]]] = []
        self._pending_delays: list[Any] = []

    async def start(self, port: int = 0) -> None:
        """Listen on ``port`` (0: any free port) of the loopback interface."""
        endpoint = TCP4ServerEndpoint(self._reactor, port, interface=self._interface)
        self._port = await endpoint.listen(Site(_Handler(self)))

    async def stop(self) -> None:
        """Stop listening and drop delayed answers."""
        for call in self._pending_delays:
            if call.active():
                call.cancel()
        if self._port is not None:
            await self._port.stopListening()
            self._port = None

    @property
    def port(self) -> int:
        """The port it listens on."""
        assert self._port is not None, "receiver not started"
        return self._port.getHost().port

    def url(self, path: str = "/account/endpoint") -> str:
        """The endpoint URL for ``path``."""
        return "http://%s:%d%s" % (self._interface, self.port, path)

    def behave(self, path: str, status: int = 200, delay: float = 0.0, body: bytes = b"{}") -> None:
        """Answer POSTs on ``path`` with ``status`` after ``delay`` seconds."""
        self._behaviours[path] = PathBehaviour(status=status, delay=delay, body=body)

    def posts_to(self, path: str) -> list[ReceivedPost]:
        """The POSTs received on ``path``."""
        return [post for post in self.posts if post.path == path]

    def wait_for_posts(self, count: int) -> Deferred[list[ReceivedPost]]:
        """A Deferred that fires once at least ``count`` POSTs have arrived."""
        waiter: Deferred[list[ReceivedPost]] = Deferred()
        if len(self.posts) >= count:
            waiter.callback(list(self.posts))
        else:
            self._waiters.append((count, waiter))
        return waiter

    def _answer_get(self, request: Request) -> bytes:
        query = {key.decode(): values[0].decode() for key, values in request.args.items()}
        self.gets.append(query)
        request.setHeader(b"content-type", b"application/json")
        if "echo" in query:
            if not self.echo_ok:
                request.setResponseCode(500)
                return b"{}"
            return json.dumps({"echo": query["echo"]}).encode()
        for name in ("api_key", "secret_key"):
            if name in query:
                request.setResponseCode(self.key_status)
                if 200 <= self.key_status < 300:
                    self.keys[name] = query[name]
                return b"{}"
        return b"{}"

    def _answer_post(self, request: Request) -> Any:
        path = request.path.decode()
        headers = {
            name.decode().lower(): values[0].decode()
            for name, values in request.requestHeaders.getAllRawHeaders()
        }
        assert request.content is not None
        post = ReceivedPost(path=path, headers=headers, body=request.content.read(), at=self._reactor.seconds())
        self.posts.append(post)
        self._notify()
        behaviour = self._behaviours.get(path, PathBehaviour())
        request.setResponseCode(behaviour.status)
        request.setHeader(b"content-type", b"application/json")
        if behaviour.delay <= 0:
            return behaviour.body

        def finish() -> None:
            if not request._disconnected:
                request.write(behaviour.body)
                request.finish()

        self._pending_delays.append(self._reactor.callLater(behaviour.delay, finish))
        return NOT_DONE_YET

    def _notify(self) -> None:
        still_waiting = []
        for count, waiter in self._waiters:
            if len(self.posts) >= count:
                waiter.callback(list(self.posts))
            else:
                still_waiting.append((count, waiter))
        self._waiters = still_waiting


def main() -> None:
    """Run a receiver as a process (for manual walkthroughs)."""
    import argparse

    from twisted.internet import task

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=9090)
    arguments = parser.parse_args()

    async def serve(_reactor: Any) -> None:
        receiver = Receiver(_reactor)
        await receiver.start(arguments.port)
        print("receiver listening on", receiver.url(), flush=True)
        await Deferred()

    task.react(lambda reactor: Deferred.fromCoroutine(serve(reactor)))


if __name__ == "__main__":
    main()
