"""Key generation and api-key hashing.

Keys are 160 random bits as 40 lowercase hex characters, like the
original's.  Because an api key is a long random token (not a password a
person chose), a single SHA-256 is enough to make the stored value useless
to a thief and costs about a microsecond to check, so authentication never
dominates a request.  Old Werkzeug ``pbkdf2:`` hashes (the original's
``pbkdf2:sha1:1000`` form) are still accepted so that a database imported
from the original keeps working; they are rewritten to the fast form on
first use.  Because every check runs on the reactor thread, a pbkdf2 hash
with more than ``MAX_PBKDF2_ITERATIONS`` iterations is refused rather than
computed (its owner gets a new key with an api-key reset).
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import os

KEY_BYTES = 20

#: The most pbkdf2 iterations checked on the reactor thread (about 1 ms).
MAX_PBKDF2_ITERATIONS = 2000
_SHA256_PREFIX = "sha256$"

#: Compared against when the username is unknown, so that an unknown user and
#: a wrong key take the same path and the same time.
DUMMY_HASH = _SHA256_PREFIX + hashlib.sha256(b"no such account").hexdigest()


def generate_key() -> str:
    """A fresh key: 40 lowercase hex characters from ``os.urandom``."""
    return binascii.hexlify(os.urandom(KEY_BYTES)).decode("ascii")


def hash_api_key(api_key: str) -> str:
    """The stored form of ``api_key``."""
    return _SHA256_PREFIX + hashlib.sha256(api_key.encode("utf-8")).hexdigest()


def verify_api_key(stored_hash: str, api_key: str) -> bool:
    """True when ``api_key`` matches ``stored_hash``, compared in constant time."""
    candidate = api_key.encode("utf-8", "surrogateescape")
    if stored_hash.startswith(_SHA256_PREFIX):
        computed = _SHA256_PREFIX + hashlib.sha256(candidate).hexdigest()
        return hmac.compare_digest(computed.encode("ascii"), stored_hash.encode("utf-8", "surrogateescape"))
    if stored_hash.startswith("pbkdf2:"):
        return _verify_werkzeug_pbkdf2(stored_hash, candidate)
    return False


def _verify_werkzeug_pbkdf2(stored_hash: str, candidate: bytes) -> bool:
    """Check a ``pbkdf2:<hash>:<iterations>$<salt>$<hex>`` hash from the original."""
    try:
        method, salt, expected = stored_hash.split("$", 2)
        _, digest, *rest = method.split(":")
        iterations = int(rest[0]) if rest else 260000
        if iterations > MAX_PBKDF2_ITERATIONS:
            return False
        computed = hashlib.pbkdf2_hmac(digest, candidate, salt.encode("utf-8"), iterations).hex()
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(computed.encode("ascii"), expected.encode("utf-8", "surrogateescape"))
