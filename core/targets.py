"""Webhook targets: which URL hosts are well-formed, and which addresses may be reached.

Shared by the API (refused at create, 422 naming ``url``) and the dispatcher (refused at
send, for timers stored before these checks and for names that resolve to such addresses).

A host is a DNS name (letters, digits, ``-`` and ``_`` in labels of 1 to 63, at most 253 in
all; international names as IDNA), a bracketed IPv6 literal, or an IPv4 literal written the
one canonical way: four decimal numbers without leading zeros. The other forms URL parsers
accept for IPv4 (``127.1``, ``0177.0.0.1``, ``0x7f000001``, ``2130706433``) are refused: they
are read differently by different clients, and an address check that reads them one way
while the client connects the other way is no check at all.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from functools import lru_cache
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Networks = Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]

# Cloud metadata services that sit outside the private ranges (AWS IPv6, Alibaba).
_METADATA = [ipaddress.ip_network("fd00:ec2::254/128"), ipaddress.ip_network("100.100.100.200/32")]
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")
# WHATWG URL's "ends in a number": a last label of digits, or 0x and hex digits, makes the
# whole host an IPv4 address to a browser-style parser.
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")


@lru_cache(maxsize=4096)
def host_of(url: str) -> str:
    """The host a URL names, lower case, without brackets or port: how caps and circuits key
    it, and the ``host`` stored with each timer."""
    try:
        return (urlsplit(url).hostname or "").lower()
    except ValueError:
        return ""


def refused_reason(address: IPAddress, allowed: Networks = ()) -> str | None:
    """Why an address written in a URL may not be a webhook target ("10.0.0.1 is a private
    address"), or None if it may. ``allowed`` networks (TIMERHOOK_ALLOWED_NETWORKS) are let
    through whatever they are."""
    kind = refused_kind(address, allowed)
    return None if kind is None else f"{address} is a {kind} address"


def refused_kind(address: IPAddress, allowed: Networks = ()) -> str | None:
    """What kind of refused address this is ("private", "loopback", ...), or None if it may
    be a target. A name's resolved address is refused by its kind alone: its tenant stores
    and reads the error, and the network behind the name is not theirs to learn."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if any(address in net for net in allowed):
        return None
    checks = [
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("metadata", any(address in net for net in _METADATA)),
        ("multicast", address.is_multicast),
        ("reserved", address.is_reserved),
        ("shared (CGNAT)", address in _CGNAT),
        ("private", address.is_private),
    ]
    for name, hit in checks:
        if hit:
            return name
    return None


def host_problem(url: str) -> str | None:
    """Why the host of an absolute http(s) URL is not a valid hostname or canonical IP
    literal, or None when it is."""
    return netloc_problem(netloc_of(url))


def literal_address(url: str) -> IPAddress | None:
    """The IP address a URL names literally, or None for a DNS name (or a malformed host)."""
    return netloc_address(netloc_of(url))


def netloc_of(url: str) -> str:
    """The ``host[:port]`` part of an absolute URL, without a full parse (it runs per send)."""
    rest = url.split("://", 1)[-1]
    for stop in "/?#":
        rest = rest.split(stop, 1)[0]
    return rest


@lru_cache(maxsize=4096)
def netloc_problem(netloc: str) -> str | None:
    """host_problem for a netloc (cached: a target's host is checked once, not per send)."""
    try:
        parts = urlsplit(f"http://{netloc}/")
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError as exc:
        return f"has a malformed host or port ({exc})"
    if not host:
        return "must name a host"
    if "[" in netloc:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return f"[{host}] is not an IPv6 address"
        return None
    name = host.removesuffix(".")
    labels = name.split(".")
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        try:
            canonical = str(ipaddress.IPv4Address(host)) == host
        except ValueError:
            canonical = False
        if not canonical:
            return (
                f"{host!r} is not a canonical IPv4 address: write it as four decimal numbers "
                "without leading zeros, like 192.0.2.10"
            )
        return None
    try:
        ascii_name = name.encode("idna").decode() if not name.isascii() else name
    except UnicodeError:
        return f"{host!r} is not a valid international host name"
    if len(ascii_name) > 253 or not all(_LABEL.fullmatch(label) for label in ascii_name.split(".")):
        return (
            f"{host!r} is not a valid host name: labels of 1 to 63 letters, digits, '-' or '_', "
            "at most 253 characters in all"
        )
    return None


@lru_cache(maxsize=4096)
def netloc_address(netloc: str) -> IPAddress | None:
    """literal_address for a netloc (cached)."""
    try:
        host = urlsplit(f"http://{netloc}/").hostname
    except ValueError:
        return None
    if not host:
        return None
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def literal_refused(url: str, allowed: Networks = ()) -> str | None:
    """Why a URL's literal IP host may not be a target (private-target protection), or None
    (a DNS name is checked where it resolves, at send time)."""
    address = literal_address(url)
    if address is None:
        return None
    return refused_reason(address, allowed)
