"""Map a verified ID token onto a Sekisho user and groups; create the user if allowed (JIT).

`map_claims` is pure; `resolve_user` is the storage shell. The e-mail address is the bridge
between an IdP account and a Sekisho account, so it is trusted only when it is exactly one
`local@domain` (an address with two '@' is parsed differently by different software, a
classic way to slip past a domain check), the IdP says it verified it (else anybody who
types the mayor's address at a lax IdP becomes the mayor), and its domain is allowed.
After the first sign-in the account is bound to the IdP's `sub`, which never changes; a
*different* `sub` arriving with an e-mail that is already bound is refused (a recycled or
re-created IdP account must not inherit somebody's Sekisho account).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine

from sekisho.audit.events import AuditEvent, GroupChanged, UserChanged
from sekisho.config.model import IdentityProvider
from sekisho.identity.oidc.errors import OidcError
from sekisho.identity.oidc.idtoken import IdTokenClaims
from sekisho.storage import oidc as store
from sekisho.storage import users

_LOCAL = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}$")
_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
_GROUP = re.compile(r"^[\w.@-]{1,128}$")
MAX_GROUPS = 200


@dataclass(frozen=True, slots=True)
class MappedIdentity:
    idp: str
    sub: str
    email: str  # lower-case domain, exactly one '@'
    display_name: str
    groups: frozenset[str]  # canonical Sekisho group names (existing ones are applied)
    idp_mfa: bool  # the IdP asserted MFA through amr / acr
    sid: str


def _refuse(code: str) -> OidcError:
    return OidcError(code, code, status=403)


def check_email(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise _refuse("email-missing")
    email = unicodedata.normalize("NFKC", value).strip()
    if email.count("@") != 1:
        raise _refuse("email-invalid")
    local, domain = email.split("@")
    domain = domain.lower()
    if not _LOCAL.match(local) or not _DOMAIN.match(domain) or ".." in local:
        raise _refuse("email-invalid")
    return f"{local}@{domain}"


def _verified(value: object) -> bool:
    return value is True or value == "true"  # some IdPs send the JSON string "true"


def _strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v for v in value[: MAX_GROUPS * 5] if isinstance(v, str)]
    return []


def map_claims(idp: IdentityProvider, token: IdTokenClaims) -> MappedIdentity:
    claims = token.claims
    email = check_email(claims.get("email"))
    if not _verified(claims.get(idp.email_verified_claim)):
        raise _refuse("email-unverified")
    domain = email.split("@")[1]
    if idp.email_domains and domain not in idp.email_domains:
        raise _refuse("email-domain")
    raw_groups = _strings(claims.get(idp.group_claim))
    if idp.group_map:  # Entra ID sends object ids: only mapped values count
        names = [idp.group_map[g] for g in raw_groups if g in idp.group_map]
    else:
        names = raw_groups
    groups = {users.canonical_name(n) for n in (*names, *idp.groups)}
    amr = set(_strings(claims.get("amr")))
    acr = claims.get("acr")
    idp_mfa = bool(amr & set(idp.mfa_amr)) or (isinstance(acr, str) and acr in idp.mfa_acr)
    name = claims.get("name")
    return MappedIdentity(
        idp=idp.id, sub=token.sub, email=email,
        display_name=name.strip()[:256] if isinstance(name, str) else "",
        groups=frozenset(sorted(g for g in groups if _GROUP.match(g))[:MAX_GROUPS]),
        idp_mfa=idp_mfa, sid=token.sid)


def _find_by_email(engine: Engine, email: str) -> users.UserRecord | None:
    user = users.get_user_by_name(engine, email)
    if user is not None:
        return user
    names = store.users_with_email(engine, email)
    if len(names) > 1:
        raise _refuse("identity-conflict")  # ambiguous: never guess whose account it is
    return users.get_user_by_name(engine, names[0]) if names else None


def resolve_user(engine: Engine, idp: IdentityProvider, mapped: MappedIdentity,
                 now: datetime) -> tuple[users.UserRecord, list[AuditEvent]]:
    """The Sekisho user for `mapped` (bound, found by e-mail, or created when `jit`), with
    the IdP-granted groups synchronised. Returns the user and the audit events to append."""
    events: list[AuditEvent] = []
    actor = f"oidc:{idp.id}"
    user_id = store.find_identity(engine, idp.id, mapped.sub)
    user = users.get_user_by_id(engine, user_id) if user_id is not None else None
    if user is None:
        user = _find_by_email(engine, mapped.email)
        if user is not None and any(s != mapped.sub
                                    for s in store.idp_subs_of_user(engine, idp.id, user.id)):
            raise _refuse("identity-conflict")
    if user is None:
        if not idp.jit:
            raise _refuse("user-unknown")
        try:
            user = users.create_user(engine, mapped.email, display_name=mapped.display_name,
                                     email=mapped.email, now=now)
        except users.AlreadyExists:
            user = users.require_user(engine, mapped.email)  # a parallel first sign-in
        else:
            events.append(UserChanged(admin=actor, user=user.username, action="create",
                                      details="jit"))
    if user.disabled:
        raise _refuse("user-disabled")
    store.record_identity(engine, idp=idp.id, sub=mapped.sub, user_id=user.id,
                          email=mapped.email, now=now)
    added, removed = store.sync_groups(engine, user_id=user.id, idp=idp.id,
                                       desired=mapped.groups)
    events += [GroupChanged(admin=actor, group=g, action="add-member", user=user.username)
               for g in added]
    events += [GroupChanged(admin=actor, group=g, action="remove-member", user=user.username)
               for g in removed]
    return user, events
