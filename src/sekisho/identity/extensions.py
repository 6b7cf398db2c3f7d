"""The identity extension surface: what a sign-in method gets, and the list of built-ins.

`build_signin_handlers` builds one `IdentityContext` and calls every builder in `BUILDERS`;
each returns its handlers keyed by exact path under `/.sekisho/` and may offer a second
factor on the MFA page with `context.flows.add_choice(...)`. Passkeys (WebAuthn) and OIDC
federation plug in here exactly as a third-party method would: add one line to `BUILDERS`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import Engine

from sekisho.config.model import Config
from sekisho.identity.flow import SignInFlows
from sekisho.identity.pages import PageKit
from sekisho.identity.sessions import SessionManager
from sekisho.identity.throttle import Throttle
from sekisho.services import AuditSink
from sekisho.web import Handler

if TYPE_CHECKING:
    from sekisho.devices.trust import DeviceTrust
    from sekisho.runtime import Runtime


@dataclass(frozen=True, slots=True)
class IdentityContext:
    current_config: Callable[[], Config]
    engine: Engine
    sessions: SessionManager
    audit: AuditSink
    clock: Callable[[], datetime]
    pages: PageKit  # rendering (ja/en catalogs), CSRF issue/verify, message pages
    flows: SignInFlows  # after_primary / pending / complete / step_up
    throttle: Throttle
    device_trust: DeviceTrust | None = None  # the gateway's mTLS registry cache, when on
    # The live snapshot (routes, compiled policies); None where no gateway runs (the staff
    # portal then offers no pages: it cannot decide without the policies in force).
    current_runtime: Callable[[], Runtime] | None = None


HandlerBuilder = Callable[[IdentityContext], Mapping[str, Handler]]

# Built-in methods beyond the password; each entry is `build_handlers(context)` of a module.
# The MFA pages (TOTP, recovery codes, step-up) are added by `signin.build_signin_handlers`.
def _builtin() -> tuple[HandlerBuilder, ...]:
    # Imported here: the methods import this module for IdentityContext.
    from sekisho.console import portal
    from sekisho.console.admin import api as admin_api
    from sekisho.console.admin import pages as admin_pages
    from sekisho.devices import edr
    from sekisho.devices import handlers as devices
    from sekisho.identity import cli_login, oidc, passkey_pages

    return (oidc.build_handlers, passkey_pages.build_handlers, devices.build_handlers,
            cli_login.build_handlers,
            edr.build_handlers, portal.build_handlers, admin_pages.build_handlers,
            admin_api.build_handlers)


BUILDERS: tuple[HandlerBuilder, ...] = _builtin()
