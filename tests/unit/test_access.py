"""The pure parts of access: loopback addresses, tenant names, key hashes, cap scopes."""

from __future__ import annotations

import pytest
import typer

from api.auth import Principal, is_loopback
from cli.admin import cap_scope
from db.access import key_hash, valid_tenant


def test_loopback_is_only_this_machine() -> None:
    for host in ("127.0.0.1", "127.0.0.9", "::1", "[::1]", "localhost"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "10.0.0.5", "192.168.1.2", "example.com", ""):
        assert not is_loopback(host), host


def test_tenant_names() -> None:
    for name in ("a", "acme", "team-7.prod_eu", "X" * 64):
        assert valid_tenant(name), name
    for name in ("", "-a", ".a", "a b", "a/b", "X" * 65, "tenant:a", "é"):
        assert not valid_tenant(name), name


def test_only_a_hash_of_a_key_is_kept_and_it_is_stable() -> None:
    assert key_hash("thk_x") == key_hash("thk_x") != key_hash("thk_y")
    assert "thk_x" not in key_hash("thk_x") and len(key_hash("thk_x")) == 64


def test_an_admin_acts_on_every_tenant_a_tenant_on_its_own() -> None:
    assert Principal("a", admin=False).scope == "a"
    assert Principal("ops", admin=True).scope is None


def test_cap_scopes_as_typed() -> None:
    assert cap_scope(["global", "600"]) == ("global", 600)
    assert cap_scope(["tenant", "acme", "0"]) == ("tenant:acme", 0)
    assert cap_scope(["host", "API.example.com", "60"]) == ("host:api.example.com", 60)
    assert cap_scope(["host", "[2001:db8::1]", "6"]) == ("host:2001:db8::1", 6)
    assert cap_scope(["host", "2001:db8::1", "6"]) == ("host:2001:db8::1", 6)
    for bad in (["tenant", "5"], ["host", "a.org:8080", "5"], ["global", "-1"],
                ["region", "x", "5"], ["tenant", "a b", "5"], ["global", "ten"]):  # fmt: skip
        with pytest.raises(typer.BadParameter):
            cap_scope(bad)
