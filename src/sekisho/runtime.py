"""The runtime snapshot: one configuration with its route table and compiled policies.

Built once per load and never mutated. The gateway reads it through a `current()` callable;
on SIGHUP the lead swaps the reference whole, so a request in flight keeps the snapshot it
started with and no request ever sees half of two configurations.

Each route's policy is put under its segment guardrail here, once per snapshot (one compiled
guardrail per profile/segment/mode, shared by the routes that have it): `policy_for(route)`
is the one place the gateway, `sekisho policy explain` and the portal get a route's policy,
so none of them can decide without the guardrail. The admin console's policy is compiled
here too, under the internet guardrail like a route of that segment (`admin_policy`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from sekisho.config.admin import ADMIN_ROUTE, DEFAULT_POLICY_NAME, default_policy
from sekisho.config.model import Config, Route
from sekisho.config.segments import guardrail_networks
from sekisho.errors import ConfigError
from sekisho.gateway.routing import RouteTable
from sekisho.policy import Policy, PolicyError, compile_policy, guard
from sekisho.policy.guardrails import Guardrail, guardrail_for


@dataclass(frozen=True)
class Runtime:
    config: Config
    routes: RouteTable
    policies: Mapping[str, Policy]  # by name, as written (no guardrail)
    digest: str = ""
    # route id -> (the route, its policy under its guardrail)
    guarded: Mapping[str, tuple[Route, Policy]] = field(default_factory=dict)
    guardrails: Mapping[str, Guardrail] = field(default_factory=dict)  # by guardrail name
    # Every admin request by session (console pages, API with a cookie) is decided by this
    # policy for `admin_route`, under the internet guardrail; None: nobody gets in.
    admin_policy: Policy | None = None
    admin_route: Route = ADMIN_ROUTE

    def policy_for(self, route: Route) -> Policy | None:
        """The compiled policy that decides requests to `route`, under its guardrail.

        None (the caller denies: fail closed) for a route this snapshot does not have — e.g.
        one matched in an older snapshot whose segment or policy has since changed.
        """
        entry = self.guarded.get(route.id)
        if entry is None or not (entry[0] is route or entry[0] == route):
            return None
        return entry[1]

    def guardrail_for(self, route: Route) -> Guardrail | None:
        """The guardrail in front of `route` (None when the configuration has no profile)."""
        policy = self.policy_for(route)
        if policy is None or policy.guardrail is None:
            return None
        return self.guardrails.get(policy.guardrail.name)


def build_runtime(config: Config, digest: str = "") -> Runtime:
    """Compile every policy and guardrail once; a route naming a missing policy is a
    ConfigError."""
    policies: dict[str, Policy] = {}
    for name, document in config.policies.items():
        try:
            policies[name] = compile_policy(name, document)
        except PolicyError as exc:
            raise ConfigError(f"{config.source}: {exc}") from None
    guardrails: dict[str, Guardrail] = {}
    compiled: dict[str, Policy] = {}
    guarded: dict[str, tuple[Route, Policy]] = {}
    networks = guardrail_networks(config.networks)
    for route in config.routes:
        policy = policies.get(route.policy)
        if policy is None:
            raise ConfigError(
                f"{config.source}: ルート '{route.id}' のポリシー '{route.policy}' がありません / "
                f"route '{route.id}' names policy '{route.policy}', which is not defined"
            )
        if config.profile is not None:
            screen = route.screen
            rail = guardrail_for(config.profile, route.segment, route.mode, networks,
                                 redirection=screen.clipboard or screen.file_transfer
                                 or screen.printing or screen.drive)
            if rail.name not in compiled:
                guardrails[rail.name] = rail
                compiled[rail.name] = rail.compile()
            policy = guard(compiled[rail.name], policy)
        guarded.setdefault(route.id, (route, policy))
    admin = _admin_policy(config, policies)
    if config.profile is not None:
        rail = guardrail_for(config.profile, ADMIN_ROUTE.segment, ADMIN_ROUTE.mode, networks)
        if rail.name not in compiled:
            guardrails[rail.name] = rail
            compiled[rail.name] = rail.compile()
        admin = guard(compiled[rail.name], admin)
    return Runtime(config, RouteTable(config.routes), MappingProxyType(policies), digest,
                   MappingProxyType(guarded), MappingProxyType(guardrails), admin)


def _admin_policy(config: Config, policies: Mapping[str, Policy]) -> Policy:
    """`admin.policy` from `policies:`, else the built-in document (docs/admin.md)."""
    name = config.admin.policy
    if name:
        policy = policies.get(name)
        if policy is None:
            raise ConfigError(f"{config.source}: admin.policy '{name}' がありません / "
                              f"admin.policy names '{name}', which is not defined")
        return policy
    try:
        return compile_policy(DEFAULT_POLICY_NAME, default_policy(config.admin))
    except PolicyError as exc:
        raise ConfigError(f"{config.source}: {exc}") from None

