"""CSRF tokens: missing, wrong, from another session or browser, expired — all refused."""

from __future__ import annotations

import pytest

from sekisho.identity.csrf import CsrfProtector, cookie_binding, session_binding

KEY = b"k" * 32


class FakeTime:
    def __init__(self):
        self.t = 1_800_000_000.0

    def __call__(self):
        return self.t


def test_roundtrip_and_rejections():
    now = FakeTime()
    csrf = CsrfProtector(KEY, clock=now)
    mine = session_binding("a" * 64)
    token = csrf.issue(mine)
    assert csrf.verify(token, [mine])
    assert not csrf.verify(None, [mine])  # missing
    assert not csrf.verify("", [mine])
    assert not csrf.verify(token[:-2] + "AA", [mine])  # wrong MAC
    assert not csrf.verify(token, [session_binding("b" * 64)])  # another session's token
    assert not csrf.verify(token, [cookie_binding("x" * 43)])
    assert not csrf.verify(token, [])  # no binding at all
    assert not csrf.verify(token, ["pre:", "sid:"])  # empty bindings never match
    assert not CsrfProtector(b"o" * 32, clock=now).verify(token, [mine])  # other installation
    now.t += csrf.max_age + 1
    assert not csrf.verify(token, [mine])  # expired


@pytest.mark.parametrize("junk", ["a.b", "a.b.c", "1.2.3.4", "-1.x.y", "١٢٣.x.y", "x" * 500])
def test_malformed_tokens(junk):
    assert not CsrfProtector(KEY).verify(junk, [session_binding("s")])


def test_pre_session_binding_verifies():
    csrf = CsrfProtector(KEY)
    binding = cookie_binding("random-cookie-value")
    assert csrf.verify(csrf.issue(binding), [session_binding("other"), binding])
