"""Building account records, and creating the admin account."""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime

from pywebhooks import records
from pywebhooks.keys import generate_key, hash_api_key
from pywebhooks.records import Record
from pywebhooks.store.interface import IStore

#: The username of the account made on first start and by ``--initdb``.
ADMIN_USERNAME = "admin"

#: Fields of an account that only its owner may see.
SECRET_FIELDS = ("api_key", "secret_key")


def new_account(
    username: str, endpoint: str, clock: IReactorTime, is_admin: bool = False
) -> tuple[Record, str]:
    """A fresh account record (api key hashed) and its plaintext api key."""
    api_key = generate_key()
    record: Record = {
        "id": records.new_id(),
        "epoch": clock.seconds(),
        "username": username,
        "endpoint": endpoint,
        "api_key": hash_api_key(api_key),
        "secret_key": generate_key(),
        "is_admin": is_admin,
        "failed_count": 0,
    }
    return record, api_key


def public_view(account: Record) -> Record:
    """``account`` without its keys (what an admin listing shows)."""
    return {field: value for field, value in account.items() if field not in SECRET_FIELDS}


async def create_admin(store: IStore, clock: IReactorTime) -> tuple[str, str]:
    """Insert the admin account; answer its plaintext ``(api_key, secret_key)``.

    Raises ``errors.DuplicateUsername`` if an account named ``admin`` exists.
    """
    record, api_key = new_account(ADMIN_USERNAME, "", clock, is_admin=True)
    await store.insert_account(record)
    return api_key, record["secret_key"]
