"""The registry of criteria: the one place where a criterion name maps to its module.

Each criterion lives in its own module exposing `CRITERION`; adding one means adding a
module, a line here, its reason codes in `reasons.py` and its section in docs/policy.md
(tests check all three).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from sekisho.policy.criteria import (
    always,
    auth_age,
    authenticated,
    client_certificate,
    device,
    email,
    email_domain,
    group,
    http_method,
    http_path,
    idp,
    mfa,
    never,
    segment,
    source_ip,
    time,
    user,
)
from sekisho.policy.criteria._base import Criterion, Predicate

CRITERIA: Mapping[str, Criterion] = MappingProxyType(
    {
        module.CRITERION.name: module.CRITERION
        for module in sorted(
            (
                always,
                auth_age,
                authenticated,
                client_certificate,
                device,
                email,
                email_domain,
                group,
                http_method,
                http_path,
                idp,
                mfa,
                never,
                segment,
                source_ip,
                time,
                user,
            ),
            key=lambda module: module.CRITERION.name,
        )
    }
)

__all__ = ["CRITERIA", "Criterion", "Predicate"]
