"""The staff portal (and, next, the admin console): Sekisho's own pages for people.

Everything here plugs into the identity extension surface (`identity.extensions.BUILDERS`)
like any third-party page set: handlers keyed by exact path under `/.sekisho/`, rendered
with the identity pages' `PageKit` (Jinja2, ja/en gettext catalogs, CSRF). Access decisions
are never made here: the portal asks the real PDP, through `Runtime.policy_for`.
"""
