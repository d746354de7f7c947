"""The daemon's outbound HTTP client: how a request body is produced."""

from __future__ import annotations

import io

from twisted.internet.testing import StringTransport
from twisted.web.iweb import IBodyProducer
from zope.interface.verify import verifyObject

from pywebhooks.httpclient import BytesProducer, body_producer


def test_a_bytes_body_is_written_whole_at_once_with_its_length() -> None:
    """A bytes body announces its length and is written in one piece when
    production starts, done at once (no cooperator turn in between)."""
    producer = body_producer(b'{"n": 1}')
    assert isinstance(producer, BytesProducer)
    assert verifyObject(IBodyProducer, producer)
    assert producer.length == 8
    consumer = StringTransport()
    done = producer.startProducing(consumer)
    assert consumer.value() == b'{"n": 1}'
    assert done.called and done.result is None
    producer.stopProducing()


def test_other_bodies_keep_treqs_default_adaptation() -> None:
    """A file-like body still goes through treq's default (a FileBodyProducer)."""
    producer = body_producer(io.BytesIO(b"abc"))
    assert not isinstance(producer, BytesProducer)
    assert producer.length == 3
