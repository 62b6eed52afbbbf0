"""Which resolved addresses private-target protection refuses."""

from __future__ import annotations

import ipaddress

import pytest

from core.targets import literal_refused, refused_reason


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.8.9.10",
        "::1",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "169.254.169.254",
        "fe80::1",
        "fc00::1",
        "::ffff:127.0.0.1",
        "::ffff:10.1.2.3",
        "0.0.0.0",
        "224.0.0.1",
        "100.64.0.1",
        "fd00:ec2::254",
    ],
)
def test_private_and_special_addresses_are_refused(address: str) -> None:
    assert refused_reason(ipaddress.ip_address(address)) is not None
    host = address if ":" not in address else f"[{address}]"
    assert literal_refused(f"http://{host}/x") is not None


@pytest.mark.parametrize("address", ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"])
def test_public_addresses_pass(address: str) -> None:
    assert refused_reason(ipaddress.ip_address(address)) is None
    host = address if ":" not in address else f"[{address}]"
    assert literal_refused(f"https://{host}:8443/") is None


def test_names_are_left_to_the_resolver() -> None:
    # The resolver checks what a name resolves to, at send time.
    assert literal_refused("http://localhost/") is None


def test_allowed_networks_let_private_addresses_through() -> None:
    allowed = [ipaddress.ip_network("10.20.0.0/16"), ipaddress.ip_network("127.0.0.0/8")]
    assert refused_reason(ipaddress.ip_address("10.20.3.4"), allowed) is None
    assert refused_reason(ipaddress.ip_address("::ffff:127.0.0.1"), allowed) is None
    assert refused_reason(ipaddress.ip_address("10.21.0.1"), allowed) is not None  # outside
    assert refused_reason(ipaddress.ip_address("169.254.169.254"), allowed) is not None
    assert literal_refused("http://10.20.0.9/", allowed) is None


@pytest.mark.parametrize("value", ["10.0.0.0/8 nonsense", "10.0.0.0/33", "fd00::/200"])
def test_malformed_allowed_networks_are_refused_at_start(value: str) -> None:
    from core.settings import Settings

    with pytest.raises(ValueError, match="is not a network"):
        Settings(_env_file=None, allowed_networks=value)  # type: ignore[call-arg]
