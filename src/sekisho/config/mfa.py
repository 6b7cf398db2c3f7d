"""The `mfa:` section: when a second factor is demanded, turned into `MfaSettings`.

Kept apart from `build.py` so the MFA rules (office CIDRs, admin groups, time limits) are
read in one place; problems name the file line and field like every other section.
"""

from __future__ import annotations

from sekisho.config.build import Builder
from sekisho.config.model import IPNetwork, MfaSettings
from sekisho.config.values import Invalid, parse_cidr, parse_duration

MAX_FLOW_LIFETIME = 30 * 60.0
MAX_ENROL_AGE = 3600.0


def build_mfa(builder: Builder) -> MfaSettings:
    section = builder.section("mfa")
    default = MfaSettings()
    networks: list[IPNetwork] = []
    raw = section.get("office_networks")
    for index, value in enumerate(raw) if isinstance(raw, list) else ():
        if isinstance(value, str):
            try:
                networks.append(parse_cidr(value))
            except Invalid as exc:
                builder.problem(("mfa", "office_networks", index), exc.ja, exc.en)
    groups = section.get("require_groups", list(default.require_groups))
    durations = {"flow_lifetime": (default.flow_lifetime, MAX_FLOW_LIFETIME),
                 "enrol_max_age": (default.enrol_max_age, MAX_ENROL_AGE)}
    values: dict[str, float] = {}
    for name, (fallback, maximum) in durations.items():
        values[name] = fallback
        if name not in section:
            continue
        try:
            values[name] = parse_duration(section[name])
        except Invalid as exc:
            builder.problem(("mfa", name), exc.ja, exc.en)
            continue
        if values[name] > maximum:
            builder.problem(("mfa", name), f"{int(maximum)} 秒以下にしてください",
                            f"must be at most {int(maximum)}s")
    require_remote = section.get("require_remote", default.require_remote)
    issuer = section.get("totp_issuer", default.totp_issuer)
    return MfaSettings(
        require_remote=require_remote if isinstance(require_remote, bool) else True,
        office_networks=tuple(networks),
        require_groups=tuple(str(g) for g in groups) if isinstance(groups, list)
        else default.require_groups,
        totp_issuer=issuer if isinstance(issuer, str) and issuer else default.totp_issuer,
        flow_lifetime=values["flow_lifetime"], enrol_max_age=values["enrol_max_age"])
