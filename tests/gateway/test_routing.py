"""Route matching: exact host, longest prefix on a segment boundary."""

from __future__ import annotations

import pytest

from sekisho.config.model import Route
from sekisho.gateway.routing import RouteTable

TABLE = RouteTable([
    Route(id="root", host="a.jp", path_prefix="/", to="http://u"),
    Route(id="app", host="a.jp", path_prefix="/app", to="http://u"),
    Route(id="app-admin", host="a.jp", path_prefix="/app/admin/", to="http://u"),
    Route(id="b", host="B.JP", path_prefix="/b", to="http://u"),
])


@pytest.mark.parametrize(("host", "path", "route"), [
    ("a.jp", "/", "root"), ("a.jp", "/x", "root"), ("a.jp", "/app", "app"),
    ("a.jp", "/app/", "app"), ("a.jp", "/app/x", "app"), ("a.jp", "/apple", "root"),
    ("a.jp", "/app/admin", "app-admin"), ("a.jp", "/app/admin/x", "app-admin"),
    ("a.jp", "/app/administrator", "app"), ("b.jp", "/b/c", "b"), ("b.jp", "/", None),
    ("c.jp", "/", None), ("A.JP", "/", None),
])
def test_match(host: str, path: str, route: str | None) -> None:
    found = TABLE.match(host, path)
    assert (found.id if found else None) == route
