"""Unit tests of the outbound target policy (which addresses calls may reach)."""

from __future__ import annotations

import pytest

from pywebhooks.targets import DEFAULT_DENY, PRIVATE_RANGES, TargetPolicy, parse_cidr_list


@pytest.mark.parametrize(
    ("ip", "label"),
    [
        ("169.254.169.254", "link-local"),
        ("169.254.0.1", "link-local"),
        ("fe80::1", "link-local"),
        ("fe80::1%eth0", "link-local"),
        ("fd00:ec2::254", "cloud metadata"),
        ("100.100.100.200", "cloud metadata"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
    ],
)
def test_default_policy_refuses_link_local_metadata_and_unspecified(ip: str, label: str) -> None:
    """By default, link-local, cloud-metadata and unspecified addresses are refused with a reason."""
    assert TargetPolicy().check(ip) == "target %s is not allowed (%s)" % (ip, label)


@pytest.mark.parametrize(
    "ip",
    ["127.0.0.1", "::1", "10.1.2.3", "192.168.1.1", "172.16.0.1", "fd00::2", "93.184.216.34", "2001:db8::1"],
)
def test_default_policy_allows_loopback_private_and_public(ip: str) -> None:
    """By default, loopback, private and public addresses are allowed (development setups work)."""
    assert TargetPolicy().check(ip) is None


@pytest.mark.parametrize(
    ("ip", "label"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("::1", "loopback"),
        ("10.0.0.1", "private"),
        ("172.31.255.255", "private"),
        ("192.168.0.1", "private"),
        ("100.64.0.1", "shared address space"),
        ("fc00::1", "unique local"),
        ("fd12:3456::1", "unique local"),
        ("fec0::1", "site-local"),
        ("169.254.169.254", "link-local"),
        ("fd00:ec2::254", "cloud metadata"),
        ("0.0.0.0", "unspecified"),
    ],
)
def test_private_shortcut_refuses_loopback_private_and_the_defaults(ip: str, label: str) -> None:
    """The word 'private' refuses loopback, private ranges and everything refused by default."""
    assert TargetPolicy(deny=["private"]).check(ip) == "target %s is not allowed (%s)" % (ip, label)


@pytest.mark.parametrize("ip", ["172.32.0.1", "100.128.0.1", "11.0.0.1", "93.184.216.34", "2001:db8::1"])
def test_private_shortcut_allows_public_addresses(ip: str) -> None:
    """With 'private' denied, addresses just outside the private ranges are still allowed."""
    assert TargetPolicy(deny=["private"]).check(ip) is None


def test_private_ranges_include_the_defaults() -> None:
    """Denying 'private' never allows less than the default policy."""
    assert set(DEFAULT_DENY) <= set(PRIVATE_RANGES)


def test_allow_overrides_deny() -> None:
    """An address in an allow network is allowed even inside a denied range."""
    policy = TargetPolicy(deny=["private"], allow=["127.0.0.1/32", "10.20.0.0/16"])
    assert policy.check("127.0.0.1") is None
    assert policy.check("10.20.3.4") is None
    assert policy.check("127.0.0.2") == "target 127.0.0.2 is not allowed (loopback)"
    assert policy.check("10.21.0.1") == "target 10.21.0.1 is not allowed (private)"


def test_allow_wins_even_when_less_specific() -> None:
    """Allow always wins: a broad allow network lifts a narrower deny."""
    policy = TargetPolicy(deny=["10.0.0.5/32"], allow=["10.0.0.0/8"])
    assert policy.check("10.0.0.5") is None


def test_allow_can_lift_a_default() -> None:
    """An operator can allow one default-refused address explicitly."""
    policy = TargetPolicy(allow=["169.254.10.10"])
    assert policy.check("169.254.10.10") is None
    assert policy.check("169.254.169.254") is not None


def test_custom_deny_names_the_network() -> None:
    """A refusal by an operator's own network says which network refused it."""
    policy = TargetPolicy(deny=["203.0.113.0/24", "2001:db8::/32"])
    assert policy.check("203.0.113.7") == "target 203.0.113.7 is not allowed (denied by 203.0.113.0/24)"
    assert policy.check("2001:db8::7") == "target 2001:db8::7 is not allowed (denied by 2001:db8::/32)"
    assert policy.check("203.0.114.1") is None


def test_deny_replaces_defaults_and_with_defaults_adds_to_them() -> None:
    """An explicit deny list replaces the defaults; with_defaults keeps them and adds."""
    assert TargetPolicy(deny=["203.0.113.0/24"]).check("169.254.169.254") is None
    policy = TargetPolicy.with_defaults(deny=["203.0.113.0/24"], allow=["169.254.1.1"])
    assert policy.check("169.254.169.254") == "target 169.254.169.254 is not allowed (link-local)"
    assert policy.check("203.0.113.9") is not None
    assert policy.check("169.254.1.1") is None


def test_refusal_names_the_most_specific_range() -> None:
    """The reason names the narrowest denied range the address falls in."""
    assert TargetPolicy(deny=["private"]).check("fd00:ec2::254") == (
        "target fd00:ec2::254 is not allowed (cloud metadata)"
    )


@pytest.mark.parametrize(
    ("ip", "label"),
    [
        ("::ffff:169.254.169.254", "link-local"),
        ("::ffff:a9fe:a9fe", "link-local"),
        ("::ffff:0.0.0.0", "unspecified"),
    ],
)
def test_ipv4_mapped_addresses_are_checked_as_ipv4(ip: str, label: str) -> None:
    """An IPv4-mapped IPv6 address is judged as the IPv4 address it carries."""
    assert TargetPolicy().check(ip) == "target %s is not allowed (%s)" % (ip, label)


def test_ipv4_mapped_loopback_is_refused_by_private() -> None:
    """::ffff:127.0.0.1 cannot slip past a 'private' deny list."""
    assert TargetPolicy(deny=["private"]).check("::ffff:127.0.0.1") == (
        "target ::ffff:127.0.0.1 is not allowed (loopback)"
    )


def test_ipv4_mapped_networks_in_lists_are_rewritten_as_ipv4() -> None:
    """A list entry written as an IPv4-mapped network matches the IPv4 addresses."""
    policy = TargetPolicy(deny=["::ffff:203.0.113.0/120"])
    assert policy.deny == ("203.0.113.0/24",)
    assert policy.check("203.0.113.1") is not None
    assert policy.check("::ffff:203.0.113.1") is not None


def test_normalise_gives_the_ipv4_address_to_connect_to() -> None:
    """The address connected to for an IPv4-mapped answer is the plain IPv4 one."""
    assert TargetPolicy().normalise("::ffff:127.0.0.1") == "127.0.0.1"
    assert TargetPolicy().normalise("::1") == "::1"


@pytest.mark.parametrize("garbage", ["", "localhost", "1.2.3", "::g"])
def test_non_addresses_are_refused(garbage: str) -> None:
    """Anything that is not an IP address is refused, never allowed by accident."""
    assert TargetPolicy().check(garbage) == "target %r is not an IP address" % (garbage,)


def test_parse_cidr_list_canonicalises() -> None:
    """The command-line list parser accepts CIDRs, bare addresses and 'private'."""
    assert parse_cidr_list(" 10.0.0.0/8, PRIVATE ,192.0.2.1,, 2001:DB8::/32 ") == [
        "10.0.0.0/8",
        "private",
        "192.0.2.1/32",
        "2001:db8::/32",
    ]
    assert parse_cidr_list("") == []


def test_parse_cidr_list_reports_host_bits() -> None:
    """A CIDR with host bits set is rejected with a suggestion."""
    with pytest.raises(ValueError, match=r"'10\.0\.0\.1/8': host bits set \(did you mean 10\.0\.0\.0/8\?\)"):
        parse_cidr_list("10.0.0.1/8")


@pytest.mark.parametrize("bad", ["10.0.0.0/33", "example.com", "10.0.0.0/8;", "fe80::/129", "privat"])
def test_parse_cidr_list_rejects_garbage(bad: str) -> None:
    """An entry that is neither a network nor 'private' is rejected, naming the entry."""
    with pytest.raises(ValueError, match="invalid target network %r" % (bad,)):
        parse_cidr_list("192.0.2.0/24," + bad)


def test_policy_rejects_bad_entries() -> None:
    """Building a policy from a bad entry fails with the same clear error."""
    with pytest.raises(ValueError, match="invalid target network 'nope'"):
        TargetPolicy(deny=["nope"])
    with pytest.raises(ValueError, match="invalid target network 'nope'"):
        TargetPolicy(allow=["nope"])


def test_private_cannot_be_allowed() -> None:
    """Allowing 'private' is refused: it would also lift the metadata protection."""
    with pytest.raises(ValueError, match="cannot be allowed"):
        TargetPolicy(allow=["private"])


def test_a_single_string_is_not_a_list() -> None:
    """Passing one string instead of a list is a type error, not a list of characters."""
    with pytest.raises(TypeError):
        TargetPolicy(deny="10.0.0.0/8")
