"""Which IP addresses outbound calls (echo, key resets, deliveries) may reach.

A :class:`TargetPolicy` is a deny list and an allow list of IP networks.  The
rule is simple on purpose: an address is **allowed if it is in any allow
network, else refused if it is in any deny network, else allowed**.  So the
allow list always wins, whatever the prefix lengths.

By default (:data:`DEFAULT_DENY`) the policy refuses the addresses no
webhook endpoint has a reason to use and an attacker would love to reach:
link-local (where cloud metadata services live), the known cloud metadata
addresses, and the unspecified addresses (which Linux routes to the host
itself).  Loopback and the private ranges stay allowed by default, so that
a development setup with a receiver on ``127.0.0.1`` works out of the box;
a deployment that faces the internet adds the word ``private`` to its deny
list, which stands for loopback, the RFC 1918 ranges, the shared address
space, unique-local IPv6 *and* everything in :data:`DEFAULT_DENY`.

IPv4-mapped IPv6 addresses (``::ffff:169.254.169.254``) are checked as the
IPv4 address they carry, and IPv4-mapped networks in a list are rewritten as
IPv4 networks, so that one cannot be used to slip past the other.

The policy only judges addresses; :mod:`pywebhooks.guarded_agent` applies it
to every address a host name resolves to, on every connection attempt.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: The word that, in a list, stands for :data:`PRIVATE_RANGES`.
PRIVATE = "private"

#: Networks refused unless allowed, with the label a refusal reports.
_DEFAULT_LABELS: tuple[tuple[str, str], ...] = (
    ("0.0.0.0/8", "unspecified"),
    ("::/128", "unspecified"),
    ("169.254.0.0/16", "link-local"),
    ("fe80::/10", "link-local"),
    ("fd00:ec2::254/128", "cloud metadata"),
    ("100.100.100.200/32", "cloud metadata"),
)

_PRIVATE_LABELS: tuple[tuple[str, str], ...] = _DEFAULT_LABELS + (
    ("127.0.0.0/8", "loopback"),
    ("::1/128", "loopback"),
    ("10.0.0.0/8", "private"),
    ("172.16.0.0/12", "private"),
    ("192.168.0.0/16", "private"),
    ("100.64.0.0/10", "shared address space"),
    ("fc00::/7", "unique local"),
    ("fec0::/10", "site-local"),
)

_LABELS: dict[str, str] = dict(_PRIVATE_LABELS)

#: What a policy refuses when no deny list is given.
DEFAULT_DENY: tuple[str, ...] = tuple(network for network, _ in _DEFAULT_LABELS)

#: What the word ``private`` stands for (a superset of :data:`DEFAULT_DENY`).
PRIVATE_RANGES: tuple[str, ...] = tuple(network for network, _ in _PRIVATE_LABELS)


def _normalise_address(address: IPAddress) -> IPAddress:
    """The IPv4 address inside an IPv4-mapped IPv6 address, else ``address``."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _normalise_network(network: IPNetwork) -> IPNetwork:
    """An IPv4-mapped IPv6 network (``::ffff:a.b.c.d/96+n``) as ``a.b.c.d/n``."""
    if (
        isinstance(network, ipaddress.IPv6Network)
        and network.prefixlen >= 96
        and network.network_address.ipv4_mapped is not None
    ):
        mapped = network.network_address.ipv4_mapped
        return ipaddress.IPv4Network((mapped, network.prefixlen - 96))
    return network


def _parse_network(entry: str) -> IPNetwork:
    """One CIDR (or bare address) as a network, with a clear ``ValueError``."""
    try:
        network = ipaddress.ip_network(entry, strict=True)
    except ValueError as error:
        if "has host bits set" in str(error):
            loose = ipaddress.ip_network(entry, strict=False)
            raise ValueError(
                "invalid target network %r: host bits set (did you mean %s?)" % (entry, loose)
            ) from None
        raise ValueError(
            "invalid target network %r: expected an IP network such as 10.0.0.0/8,"
            " an IP address, or the word %r" % (entry, PRIVATE)
        ) from error
    return _normalise_network(network)


def _expand(entry: str) -> list[IPNetwork]:
    """The networks one list entry stands for."""
    word = entry.strip()
    if word.lower() == PRIVATE:
        return [ipaddress.ip_network(network) for network in PRIVATE_RANGES]
    return [_parse_network(word)]


def parse_cidr_list(text: str) -> list[str]:
    """Parse a comma-separated list of CIDRs and the word ``private``.

    Returns the entries in canonical form (``"10.0.0.0/8"``, ``"private"``);
    a bare address becomes a single-address network.  Empty items are skipped,
    so ``""`` is an empty list.  Raises ``ValueError`` naming the bad entry.
    """
    entries: list[str] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        if item.lower() == PRIVATE:
            entries.append(PRIVATE)
        else:
            entries.append(str(_parse_network(item)))
    return entries


class TargetPolicy:
    """Decides which IP addresses outbound HTTP calls may connect to.

    ``deny`` and ``allow`` are CIDR strings (or bare addresses); ``deny`` may
    contain the word ``private``.  ``deny`` *replaces* :data:`DEFAULT_DENY`;
    use :meth:`with_defaults` to add to it (what the command line does).
    An address is allowed if it is in any ``allow`` network, else refused if
    it is in any ``deny`` network, else allowed.
    """

    def __init__(self, deny: Sequence[str] = DEFAULT_DENY, allow: Sequence[str] = ()) -> None:
        if isinstance(deny, str) or isinstance(allow, str):
            raise TypeError("deny and allow are sequences of CIDR strings, not one string")
        if any(entry.strip().lower() == PRIVATE for entry in allow):
            raise ValueError(
                "the word %r cannot be allowed: list the networks to allow instead" % (PRIVATE,)
            )
        self._deny = _unique(network for entry in deny for network in _expand(entry))
        # Most specific first, so that a refusal names the narrowest range.
        self._deny.sort(key=lambda network: network.prefixlen, reverse=True)
        self._allow = _unique(network for entry in allow for network in _expand(entry))

    @classmethod
    def with_defaults(cls, deny: Iterable[str] = (), allow: Iterable[str] = ()) -> TargetPolicy:
        """A policy that refuses :data:`DEFAULT_DENY` plus ``deny``, except ``allow``."""
        return cls(deny=(*DEFAULT_DENY, *deny), allow=tuple(allow))

    @property
    def deny(self) -> tuple[str, ...]:
        """The refused networks, expanded and canonical."""
        return tuple(str(network) for network in self._deny)

    @property
    def allow(self) -> tuple[str, ...]:
        """The allowed networks, expanded and canonical."""
        return tuple(str(network) for network in self._allow)

    def check(self, ip: str) -> str | None:
        """Why connecting to ``ip`` is refused, or ``None`` if it is allowed.

        Anything that is not an IP address is refused.
        """
        try:
            address = _normalise_address(ipaddress.ip_address(ip))
        except ValueError:
            return "target %r is not an IP address" % (ip,)
        if any(address in network for network in self._allow):
            return None
        for network in self._deny:
            if address in network:
                label = _LABELS.get(str(network), "denied by %s" % (network,))
                return "target %s is not allowed (%s)" % (ip, label)
        return None

    def normalise(self, ip: str) -> str:
        """The address to connect to for ``ip``: IPv4-mapped addresses as IPv4."""
        return str(_normalise_address(ipaddress.ip_address(ip)))

    def __repr__(self) -> str:
        return "TargetPolicy(deny=%r, allow=%r)" % (self.deny, self.allow)


def _unique(networks: Iterable[IPNetwork]) -> list[IPNetwork]:
    """``networks`` without repeats, in their first order."""
    return list(dict.fromkeys(networks))
