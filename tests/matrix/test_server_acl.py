"""Server ACLs, rule by rule as the spec orders them."""

from __future__ import annotations

import pytest

from lowband.gateway.matrix.server_acl import server_allowed


@pytest.mark.parametrize(
    ("acl", "server", "allowed"),
    [
        (None, "anything.example", True),  # 1: no ACL
        ({"allow": ["*"]}, "1.2.3.4:8448", True),
        ({"allow": ["*"], "allow_ip_literals": False}, "1.2.3.4:8448", False),  # 2
        ({"allow": ["*"], "allow_ip_literals": False}, "[::1]:8448", False),
        ({"allow": ["*"], "allow_ip_literals": "no"}, "1.2.3.4", True),  # not a boolean: true
        ({"allow": ["*"], "deny": ["evil.com"]}, "evil.com:1234", False),  # 3, port ignored
        ({"allow": ["*"], "deny": ["*.EVIL.com"]}, "sub.evil.com", False),  # case-insensitive
        ({"allow": ["*"], "deny": ["evil.com"]}, "notevil.com", True),
        ({"allow": ["good.example", "*.good.example"]}, "a.good.example:8448", True),  # 4
        ({"allow": ["good.example"]}, "bad.example", False),  # 5
        ({"deny": []}, "good.example", False),  # no allow list denies everyone
        ({"allow": ["gw-?.lan"]}, "gw-b.lan", True),
        ({"allow": ["gw-?.lan"]}, "gw-bb.lan", False),
        ({"allow": ["a.b"]}, "axb", False),  # the dot is literal
        ({"allow": [5, None, "ok.example"], "deny": "evil"}, "ok.example", True),  # junk entries ignored
    ],
)
def test_acl_rules(acl, server, allowed):
    assert server_allowed(acl, server) is allowed
