"""Embedding: another Twisted program runs the service and mounts the API in its own site."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest_twisted
import treq
from twisted.application.service import Application, IService
from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.web.resource import Resource
from twisted.web.server import Site

from pywebhooks.service import PyWebhooksService
from pywebhooks.settings import Settings
from tests.support.daemon import ApiClient
from tests.support.receiver import Receiver


class _HomePage(Resource):
    """The host program's own page."""

    isLeaf = True

    def render_GET(self, request: object) -> bytes:
        return b"host home page"


@pytest_twisted.ensureDeferred
async def test_embedded_service_serves_under_the_host_sites_path(tmp_path: Path) -> None:
    """A program with its own Site and Application mounts the API under /hooks and it works end to end."""
    keys_out = io.StringIO()
    settings = Settings(database="sqlite:%s" % (tmp_path / "hooks.sqlite3",), retry_delays=(1.0,))
    service = PyWebhooksService(reactor, settings, out=keys_out, listen=False)

    # The host program: its own root resource, its own application.
    root = Resource()
    root.putChild(b"", _HomePage())
    root.putChild(b"hooks", service.api.resource())  # mounted before the service starts
    application = Application("host-program")
    service.setServiceParent(application)
    host_port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(Site(root))
    receiver = Receiver(reactor)
    await receiver.start()
    top = IService(application)
    top.startService()
    try:
        await service.when_started()
        assert service.port is None  # listen=False: only the host's site serves it
        (line,) = keys_out.getvalue().splitlines()
        admin = dict(json.loads(line), username="admin")

        base = "http://127.0.0.1:%d" % (host_port.getHost().port,)
        api = ApiClient(reactor, base + "/hooks")
        reply = await api.call("GET", "/v1/accounts?start=0&limit=10", account=admin)
        assert reply.status == 200
        assert [account["username"] for account in reply.body["accounts"]] == ["admin"]

        publisher, subscriber, registration = await api.publisher_and_subscriber(
            receiver.url, "embedded.event", {"hello": "host"})
        await api.trigger(publisher, registration["id"])
        (post,) = await receiver.wait_for_posts(1)
        assert post.path == "/subscriber"
        assert post.json() == {"hello": "host"}

        home = await treq.get(base + "/", persistent=False, timeout=10)
        assert await home.content() == b"host home page"
    finally:
        await top.stopService()
        await host_port.stopListening()
        await receiver.stop()
    assert not service.running
