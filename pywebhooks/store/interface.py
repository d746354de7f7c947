"""``IStore``: the one storage interface the API and the deliverer use.

Implementations: ``memory.MemoryStore`` (unit tests), ``sqlite.SQLiteStore``
(the embedded default) and ``rethinkdb.RethinkDBStore`` (several daemons on
one cluster).  Every method is a coroutine function (or returns a Deferred):
the caller awaits it.  Records are plain dicts shaped like the API's JSON.

Record shapes (all carry ``id``: UUID4 string and ``epoch``: float seconds):

- account: ``username``, ``endpoint``, ``api_key`` (the *hash*),
  ``secret_key``, ``is_admin`` (bool), ``failed_count`` (int);
- registration: ``account_id``, ``event``, ``description``, ``event_data``;
- subscription: ``account_id`` (the subscriber), ``registration_id``;
- firing (a triggered webhook): ``registration_id``;
- delivery: ``firing_id``, ``registration_id``, ``subscription_id``,
  ``account_id`` (the subscriber), ``event``, ``endpoint``, ``state``
  (``"pending"``, ``"delivered"`` or ``"failed"``) and ``attempts``: a list of
  attempt records ``{"attempt", "at", "ok", "status_code", "error",
  "duration"}`` in the order they were made.

Lists are ordered by creation (insertion order) and paged with a zero-based
``start`` offset and a ``limit``; they answer a ``records.Page`` whose
``more`` says whether at least one row follows the page.

Failures: ``errors.StoreUnavailable`` when the backend cannot be reached or
written (the API answers 503), ``errors.DuplicateUsername`` from
``insert_account``, ``errors.DatabaseMissing`` from ``open`` when the schema
is absent.
"""

from __future__ import annotations

from zope.interface import Interface


class IStore(Interface):
    """Durable records of the service."""

    # -- lifecycle -------------------------------------------------------

    def open():
        """Connect; fail with ``DatabaseMissing`` if the schema does not exist."""

    def close():
        """Release connections and threads."""

    def initialize(drop):
        """Create the schema (tables, indexes); drop everything first if ``drop``."""

    # -- accounts --------------------------------------------------------

    def insert_account(account):
        """Insert a new account; ``DuplicateUsername`` if the name is taken (atomic)."""

    def get_account(account_id):
        """The account with this id, or None."""

    def get_account_by_username(username):
        """The account with exactly this username, or None."""

    def update_account(account_id, changes):
        """Set the fields in ``changes``; a ``WriteResult`` (replaced/unchanged/skipped)."""

    def delete_account(account_id):
        """Delete the account, its subscriptions, and its registrations with every
        subscription to them; the ``WriteResult`` counts the account row only
        (``deleted: 1`` or ``skipped: 1``)."""

    def delete_non_admin_accounts():
        """Delete every account whose ``is_admin`` is false, with no cascade."""

    def list_accounts(start, limit):
        """A ``Page`` of all accounts."""

    def count_accounts():
        """How many accounts exist (used to create the admin on first start)."""

    # -- registrations ---------------------------------------------------

    def insert_registration(registration):
        """Insert a registration."""

    def get_registration(registration_id):
        """The registration, or None."""

    def update_registration(registration_id, changes):
        """Set the fields in ``changes``; a ``WriteResult``."""

    def delete_registration(registration_id):
        """Delete the registration and every subscription to it; the
        ``WriteResult`` counts the registration row only."""

    def delete_all_registrations():
        """Delete every registration, leaving subscriptions (no cascade)."""

    def list_registrations(start, limit, account_id=None):
        """A ``Page`` of registrations, only those owned by ``account_id`` if given."""

    def count_registrations(account_id):
        """How many registrations ``account_id`` owns."""

    # -- subscriptions ---------------------------------------------------

    def insert_subscription(subscription):
        """Insert a subscription (duplicates are allowed)."""

    def get_subscription(subscription_id):
        """The subscription, or None."""

    def delete_subscription(subscription_id):
        """Delete one subscription; a ``WriteResult``."""

    def delete_all_subscriptions():
        """Delete every subscription."""

    def list_subscriptions(start, limit, account_id=None, visible_to=None):
        """A ``Page`` of subscriptions: those of subscriber ``account_id`` if
        given; if ``visible_to`` is given, those whose subscriber is that account
        or whose registration that account owns."""

    def count_subscriptions(account_id):
        """How many subscriptions ``account_id`` holds."""

    def subscribers(registration_id):
        """The fan-out of one firing: for each subscription to the registration,
        in creation order, whose subscriber account still exists, a dict with
        ``subscription_id``, ``account_id``, ``endpoint``, ``secret_key`` and
        ``failed_count``."""

    # -- firings and deliveries -------------------------------------------

    def insert_firing(firing, deliveries):
        """Record a firing and its delivery records together (one transaction
        where the backend has them).  A delivery id repeated within the firing
        is refused; ids are random UUID4s, so they do not repeat across
        firings either (only some stores check that)."""

    def list_firings(start, limit, owner_id=None):
        """A ``Page`` of firings; only firings of registrations owned by
        ``owner_id`` if given."""

    def get_deliveries(firing_id):
        """The delivery records of one firing, in creation order."""

    def record_attempt(firing_id, delivery_id, account_id, attempt, final):
        """Append ``attempt`` to the log of delivery ``delivery_id`` of firing
        ``firing_id`` and update its state (``delivered`` if ``attempt["ok"]``,
        ``failed`` if not and ``final``); nothing is logged when the firing has
        no such delivery.  Atomically set the subscriber's ``failed_count`` to 0
        on success or add 1 on failure.  Returns the new failed_count (None if
        the account is gone)."""
