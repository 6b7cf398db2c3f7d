"""`PolicyError`: a policy document that cannot be compiled, with where and what is expected.

The configuration loader maps `path` back to a file line, so the error must name the exact
key or list index (`("allow", "and", 2, "source_ip")`) rather than just the policy.
"""

from __future__ import annotations

PathItem = str | int
Path = tuple[PathItem, ...]


def format_path(path: Path) -> str:
    """Render `("allow", "and", 2, "source_ip")` as `allow.and[2].source_ip`."""
    out = ""
    for item in path:
        if isinstance(item, int):
            out += f"[{item}]"
        else:
            out += f".{item}" if out else item
    return out or "(document)"


class PolicyError(ValueError):
    """A policy document is invalid. `path` locates the problem, `message` says what is expected.

    `message` is English, `message_ja` Japanese; `str()` gives both, Japanese first.
    `policy` is the policy's name once `compile_policy` has added it.
    """

    def __init__(self, path: Path, message: str, message_ja: str = "", policy: str = "") -> None:
        super().__init__(path, message)
        self.path: Path = tuple(path)
        self.message = message
        self.message_ja = message_ja or message
        self.policy = policy

    def __str__(self) -> str:
        where = format_path(self.path)
        name = f"'{self.policy}' " if self.policy else ""
        return (
            f"ポリシー {name}の {where}: {self.message_ja} / "
            f"policy {name}at {where}: {self.message}"
        )
