"""Every way a policy document can be wrong: a `PolicyError` naming the path and expectation."""

from __future__ import annotations

from typing import Any

import pytest

from sekisho.policy import PolicyError, compile_policy


def _allow(*items: Any) -> dict[str, Any]:
    return {"allow": {"and": list(items)}}


# (document, expected path, a fragment of the English message)
CASES: list[tuple[Any, tuple[str | int, ...], str]] = [
    # document and blocks
    ([{"group": "staff"}], (), "expected a mapping with 'allow' and/or 'deny'"),
    ("allow", (), "expected a mapping"),
    ({"allow": {"and": [{"always": True}]}, "permit": {}}, ("permit",), "unknown key 'permit'"),
    ({"allow": None}, ("allow",), "exactly one of 'and', 'or', 'not'"),
    ({"allow": [{"group": "staff"}]}, ("allow",), "got a list"),
    ({"allow": {"group": "staff"}}, ("allow",), "exactly one of 'and', 'or', 'not'"),
    ({"allow": {}}, ("allow",), "exactly one of"),
    (
        {"allow": {"and": [{"always": True}], "or": [{"always": True}]}},
        ("allow",),
        "got keys 'and', 'or'",
    ),
    ({"allow": {"and": []}}, ("allow", "and"), "got an empty list"),
    ({"deny": {"or": {"group": "x"}}}, ("deny", "or"), "non-empty list"),
    ({"deny": {"not": "group"}}, ("deny", "not"), "non-empty list"),
    (_allow("group"), ("allow", "and", 0), "single-key mapping"),
    (_allow({"group": "a", "user": "b"}), ("allow", "and", 0), "got 2 keys"),
    (_allow({}), ("allow", "and", 0), "got 0 keys"),
    (
        _allow({"always": True}, {"or": [{"and": []}]}),
        ("allow", "and", 1, "or", 0, "and"),
        "non-empty list",
    ),
    (_allow({"gruop": "staff"}), ("allow", "and", 0, "gruop"), "unknown criterion 'gruop'"),
    (_allow({"Group": "staff"}), ("allow", "and", 0, "Group"), "expected one of: always,"),
    (_allow({"xor": []}), ("allow", "and", 0, "xor"), "unknown criterion 'xor'"),
    # true-only criteria
    (_allow({"authenticated": False}), ("allow", "and", 0, "authenticated"), "expected true"),
    (_allow({"authenticated": "yes"}), ("allow", "and", 0, "authenticated"), "expected true"),
    (_allow({"always": 1}), ("allow", "and", 0, "always"), "expected true"),
    (_allow({"never": None}), ("allow", "and", 0, "never"), "expected true"),
    # name lists
    (_allow({"user": []}), ("allow", "and", 0, "user"), "got an empty list"),
    (_allow({"user": 123}), ("allow", "and", 0, "user"), "got a number"),
    (_allow({"user": ["a", 5]}), ("allow", "and", 0, "user", 1), "non-empty string"),
    (_allow({"user": ""}), ("allow", "and", 0, "user"), "non-empty string"),
    (_allow({"user": " tanaka"}), ("allow", "and", 0, "user"), "without surrounding spaces"),
    (_allow({"group": {"name": "x"}}), ("allow", "and", 0, "group"), "got a mapping"),
    (_allow({"group": None}), ("allow", "and", 0, "group"), "got nothing (null)"),
    (_allow({"group": ["staff", ["x"]]}), ("allow", "and", 0, "group", 1), "group name"),
    # e-mail
    (_allow({"email": "tanaka.city.lg.jp"}), ("allow", "and", 0, "email"), "e-mail address"),
    (_allow({"email": ["a@b", "a@b@c"]}), ("allow", "and", 0, "email", 1), "e-mail address"),
    (_allow({"email": "@city.lg.jp"}), ("allow", "and", 0, "email"), "e-mail address"),
    (_allow({"email": "a@"}), ("allow", "and", 0, "email"), "e-mail address"),
    (_allow({"email_domain": "@city.lg.jp"}), ("allow", "and", 0, "email_domain"), "no '@'"),
    (_allow({"email_domain": ".city.lg.jp"}), ("allow", "and", 0, "email_domain"), "domain"),
    (_allow({"email_domain": "city.lg.jp."}), ("allow", "and", 0, "email_domain"), "domain"),
    (_allow({"email_domain": []}), ("allow", "and", 0, "email_domain"), "empty list"),
    # source_ip
    (_allow({"source_ip": "10.0.0.0/33"}), ("allow", "and", 0, "source_ip"), "CIDR"),
    (_allow({"source_ip": "10.0.0.1/8"}), ("allow", "and", 0, "source_ip"), "host bits"),
    (_allow({"source_ip": "office"}), ("allow", "and", 0, "source_ip"), "CIDR"),
    (
        _allow({"source_ip": ["10.0.0.0/8", "2001:db8::/129"]}),
        ("allow", "and", 0, "source_ip", 1),
        "CIDR",
    ),
    (_allow({"source_ip": []}), ("allow", "and", 0, "source_ip"), "empty list"),
    (_allow({"source_ip": 10}), ("allow", "and", 0, "source_ip"), "got a number"),
    # http_method
    (_allow({"http_method": "GET POST"}), ("allow", "and", 0, "http_method"), "HTTP method"),
    (_allow({"http_method": ["GET", ""]}), ("allow", "and", 0, "http_method", 1), "non-empty"),
    (_allow({"http_method": []}), ("allow", "and", 0, "http_method"), "empty list"),
    # http_path
    (_allow({"http_path": "/admin"}), ("allow", "and", 0, "http_path"), "{prefix: /path}"),
    (_allow({"http_path": []}), ("allow", "and", 0, "http_path"), "{prefix: /path}"),
    (_allow({"http_path": {"begins": "/a"}}), ("allow", "and", 0, "http_path"), "{exact: /path}"),
    (
        _allow({"http_path": {"prefix": "/a", "exact": "/b"}}),
        ("allow", "and", 0, "http_path"),
        "{prefix: /path}",
    ),
    (
        _allow({"http_path": [{"prefix": "/a"}, "/b"]}),
        ("allow", "and", 0, "http_path", 1),
        "{prefix: /path}",
    ),
    (
        _allow({"http_path": {"prefix": "admin"}}),
        ("allow", "and", 0, "http_path", "prefix"),
        "starting with '/'",
    ),
    (
        _allow({"http_path": {"prefix": "/a/../b"}}),
        ("allow", "and", 0, "http_path", "prefix"),
        "normalised path",
    ),
    (
        _allow({"http_path": {"exact": "/a/./b"}}),
        ("allow", "and", 0, "http_path", "exact"),
        "normalised path",
    ),
    (
        _allow({"http_path": {"prefix": "//a"}}),
        ("allow", "and", 0, "http_path", "prefix"),
        "normalised path",
    ),
    (
        _allow({"http_path": {"prefix": "/a\\b"}}),
        ("allow", "and", 0, "http_path", "prefix"),
        "normalised path",
    ),
    (
        _allow({"http_path": {"exact": "/a?b=1"}}),
        ("allow", "and", 0, "http_path", "exact"),
        "normalised path",
    ),
    (
        _allow({"http_path": {"exact": "/a\x00"}}),
        ("allow", "and", 0, "http_path", "exact"),
        "normalised path",
    ),
    (
        _allow({"http_path": [{"exact": "/a"}, {"prefix": 5}]}),
        ("allow", "and", 0, "http_path", 1, "prefix"),
        "normalised path",
    ),
    (_allow({"device": True}), ("allow", "and", 0, "device"), "mapping"),
    (_allow({"device": {}}), ("allow", "and", 0, "device"), "mapping"),
    (_allow({"device": {"enrolled": False}}), ("allow", "and", 0, "device", "enrolled"),
     "expected true"),
    (_allow({"device": {"posture": "x"}}), ("allow", "and", 0, "device", "posture"),
     "unknown key"),
    (_allow({"device": {"id": []}}), ("allow", "and", 0, "device", "id"), "empty list"),
    (_allow({"device": {"profile": []}}), ("allow", "and", 0, "device", "profile"),
     "empty list"),
    (_allow({"client_certificate": "CN=x"}), ("allow", "and", 0, "client_certificate"),
     "mapping"),
    (_allow({"client_certificate": {"subject": "x"}}),
     ("allow", "and", 0, "client_certificate", "subject"), "unknown key"),
    (_allow({"client_certificate": {"issuer": ["CN=x"]}}),
     ("allow", "and", 0, "client_certificate", "issuer"), "one string"),
    (_allow({"client_certificate": {"san": [""]}}),
     ("allow", "and", 0, "client_certificate", "san", 0), "non-empty string"),
]


@pytest.mark.parametrize(("document", "path", "fragment"), CASES)
def test_policy_error(document: Any, path: tuple[str | int, ...], fragment: str) -> None:
    with pytest.raises(PolicyError) as caught:
        compile_policy("city", document)
    error = caught.value
    assert error.path == path
    assert fragment in error.message
    assert error.policy == "city"
    assert error.message_ja and error.message_ja != error.message
    text = str(error)
    assert text.startswith("ポリシー 'city' ")
    assert " / policy 'city' at " in text
    assert isinstance(error, ValueError)


def test_error_text_names_path_like_an_admin_writes_it() -> None:
    with pytest.raises(PolicyError) as caught:
        compile_policy("office", _allow({"always": True}, {"or": [{"source_ip": "x"}]}))
    assert "allow.and[1].or[0].source_ip" in str(caught.value)


def test_unknown_criterion_lists_the_known_ones() -> None:
    with pytest.raises(PolicyError) as caught:
        compile_policy("p", _allow({"gruop": "staff"}))
    assert caught.value.message.startswith(
        "unknown criterion 'gruop' (expected one of: always, auth_age, authenticated, "
        "client_certificate, device, email, "
    )


def test_nesting_depth_is_bounded() -> None:
    block: dict[str, Any] = {"or": [{"always": True}]}
    for _ in range(40):
        block = {"and": [block]}
    with pytest.raises(PolicyError) as caught:
        compile_policy("deep", {"allow": block})
    assert "nested more than" in caught.value.message


def test_nesting_within_the_bound_compiles() -> None:
    block: dict[str, Any] = {"or": [{"always": True}]}
    for _ in range(14):
        block = {"and": [block]}
    compile_policy("ok", {"allow": block})
