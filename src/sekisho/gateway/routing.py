"""Route matching: exact host (lower-case, no port), then the longest path prefix that ends
on a segment boundary — so a route for `/app` never captures `/apple`.

Pure and built once per configuration snapshot; a lookup is a dict hit and a short scan.
"""

from __future__ import annotations

from collections.abc import Iterable

from sekisho.config.model import Route


def _prefix(prefix: str) -> str:
    prefix = "/" + prefix.strip("/")
    return prefix


class RouteTable:
    """Host → routes ordered by prefix length (longest first)."""

    __slots__ = ("_by_host", "routes")

    def __init__(self, routes: Iterable[Route]) -> None:
        self.routes: tuple[Route, ...] = tuple(routes)
        by_host: dict[str, list[tuple[str, Route]]] = {}
        for route in self.routes:
            by_host.setdefault(route.host.lower().rstrip("."), []).append(
                (_prefix(route.path_prefix), route)
            )
        self._by_host = {
            host: tuple(sorted(entries, key=lambda e: len(e[0]), reverse=True))
            for host, entries in by_host.items()
        }

    @property
    def hosts(self) -> frozenset[str]:
        return frozenset(self._by_host)

    def has_host(self, host: str) -> bool:
        return host in self._by_host

    def match(self, host: str, path: str) -> Route | None:
        """The route for a lower-case, port-less host and a normalised path, or None."""
        entries = self._by_host.get(host)
        if entries is None:
            return None
        for prefix, route in entries:
            if prefix == "/":
                return route
            if path.startswith(prefix) and (
                len(path) == len(prefix) or path[len(prefix)] == "/"
            ):
                return route
        return None
