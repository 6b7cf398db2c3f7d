"""The `portal:` section: the staff portal's own host and the contact it shows.

The host is compared with the request's Host exactly as route hosts are (lower-case ASCII,
Japanese names as punycode), so `portal.host` matches the same spellings a route's `from`
would. A route that serves `/` on the same host keeps it (routes win; the portal stays at
/.sekisho/portal/ on every host), see docs/portal.md.
"""

from __future__ import annotations

from sekisho.config.build import Builder
from sekisho.config.model import PortalSettings
from sekisho.config.values import Invalid, canonical_host


def build_portal(builder: Builder) -> PortalSettings:
    section = builder.section("portal")
    host = ""
    raw = section.get("host")
    if isinstance(raw, str) and raw:
        try:
            host = canonical_host(raw.strip())
        except Invalid as exc:
            builder.problem(("portal", "host"), exc.ja + "（ポートやパスは書けません）",
                            exc.en + " (a host name only: no scheme, port or path)")
    contact = section.get("contact")
    return PortalSettings(host=host, contact=contact.strip() if isinstance(contact, str) else "")
