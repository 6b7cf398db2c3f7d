"""The runtime snapshot: one configuration with its route table and compiled policies.

Built once per load and never mutated. The gateway reads it through a `current()` callable;
on SIGHUP the lead swaps the reference whole, so a request in flight keeps the snapshot it
started with and no request ever sees half of two configurations.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from sekisho.config.model import Config, Route
from sekisho.errors import ConfigError
from sekisho.gateway.routing import RouteTable
from sekisho.policy import Policy, PolicyError, compile_policy


@dataclass(frozen=True)
class Runtime:
    config: Config
    routes: RouteTable
    policies: Mapping[str, Policy]
    digest: str = ""

    def policy_for(self, route: Route) -> Policy | None:
        """The compiled policy that decides requests to `route` (None: fail closed)."""
        return self.policies.get(route.policy)


def build_runtime(config: Config, digest: str = "") -> Runtime:
    """Compile every policy once; a route naming a missing policy is a ConfigError."""
    policies: dict[str, Policy] = {}
    for name, document in config.policies.items():
        try:
            policies[name] = compile_policy(name, document)
        except PolicyError as exc:
            raise ConfigError(f"{config.source}: {exc}") from None
    for route in config.routes:
        if route.policy not in policies:
            raise ConfigError(
                f"{config.source}: ルート '{route.id}' のポリシー '{route.policy}' がありません / "
                f"route '{route.id}' names policy '{route.policy}', which is not defined"
            )
    return Runtime(config, RouteTable(config.routes), MappingProxyType(policies), digest)
