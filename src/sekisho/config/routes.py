"""Routes and policies: checks that span entries (unique ids, unique host+prefix, policy names).

Policies are validated deeply by `sekisho.policy.compile_policy`; a `PolicyError.path` inside
the policy document is mapped back to the file line of the exact node. An inline route policy
becomes the named policy `route:<id>`, so the rest of Sekisho sees only named policies.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from sekisho.config.build import Builder
from sekisho.config.connector import is_connector_target, parse_connector_target
from sekisho.config.model import (
    SCREEN_IDLE_DEFAULT,
    Route,
    RouteMode,
    ScreenOptions,
    Segment,
    Timeouts,
)
from sekisho.config.problems import FieldPath
from sekisho.config.tcp import is_tcp_target, parse_tcp_target
from sekisho.config.values import Invalid, parse_from, parse_to

INLINE_PREFIX = "route:"
VNC_SCHEME = "vnc://"  # a screen route's VNC server, reached directly (gateway.screen)


def named_policies(builder: Builder) -> dict[str, Mapping[str, Any]]:
    raw = builder.data.get("policies")
    policies: dict[str, Mapping[str, Any]] = {}
    for name, document in raw.items() if isinstance(raw, Mapping) else ():
        if isinstance(document, Mapping):
            policies[str(name)] = document
    return policies


def build_routes(
    builder: Builder,
    policies: dict[str, Mapping[str, Any]],
    timeouts: Timeouts,
    inline_paths: dict[str, FieldPath],
) -> tuple[Route, ...]:
    """Every valid route; inline policies are added to `policies` as `route:<id>`, and
    `inline_paths` maps each such name to its field path for error reporting."""
    raw = builder.data.get("routes")
    routes: list[Route] = []
    seen_ids: dict[str, int] = {}
    seen_targets: dict[tuple[str, str], tuple[str, int]] = {}
    for index, entry in enumerate(raw) if isinstance(raw, list) else ():
        if not isinstance(entry, Mapping):
            continue
        here: FieldPath = ("routes", index)
        line = builder.lines.line(here)
        route_id = entry.get("id")
        if not isinstance(route_id, str):
            continue
        if route_id in seen_ids:
            builder.problem(
                (*here, "id"),
                f"ルート id '{route_id}' が重複しています（最初は {seen_ids[route_id]} 行目）",
                f"duplicate route id '{route_id}' (first on line {seen_ids[route_id]})",
            )
        seen_ids.setdefault(route_id, line)
        host = path_prefix = to = None
        if isinstance(entry.get("from"), str):
            try:
                host, path_prefix = parse_from(entry["from"])
            except Invalid as exc:
                builder.problem((*here, "from"), exc.ja, exc.en)
        if isinstance(entry.get("to"), str):
            try:
                to = _target(builder, entry["to"], tcp=entry.get("mode") == "tcp",
                             screen=entry.get("mode") == "screen")
            except Invalid as exc:
                builder.problem((*here, "to"), exc.ja, exc.en)
        if host is not None and path_prefix is not None:
            other = seen_targets.get((host, path_prefix))
            if other is not None:
                builder.problem(
                    (*here, "from"),
                    f"ルート '{other[0]}'（{other[1]} 行目）と同じホストとパスです",
                    f"same host and path prefix as route '{other[0]}' (line {other[1]})",
                )
            else:
                seen_targets[(host, path_prefix)] = (route_id, line)
        policy_name = _route_policy(builder, entry.get("policy"), route_id, here, policies)
        if policy_name is not None and policy_name.startswith(INLINE_PREFIX):
            inline_paths[policy_name] = (*here, "policy")
        route_timeouts = None
        if isinstance(entry.get("timeouts"), Mapping):
            route_timeouts = builder.settings(
                Timeouts, (*here, "timeouts"), entry["timeouts"], base=timeouts
            )
        mode, screen = _mode(builder, entry, here)
        segment = entry.get("segment")
        if None in (host, path_prefix, to, policy_name) or segment not in (
            "internet",
            "lgwan",
            "mynumber",
        ):
            continue
        routes.append(
            Route(
                id=route_id,
                host=cast(str, host),
                path_prefix=cast(str, path_prefix),
                to=cast(str, to),
                segment=cast(Segment, segment),
                policy=cast(str, policy_name),
                websocket=entry.get("websocket") is True,
                allow_ambiguous_paths=entry.get("allow_ambiguous_paths") is True,
                preserve_host=entry.get("preserve_host") is True,
                timeouts=route_timeouts,
                title=entry["title"] if isinstance(entry.get("title"), str) else "",
                idp=entry["idp"] if isinstance(entry.get("idp"), str) else "",
                mode=mode,
                screen=screen,
            )
        )
    return tuple(routes)


def _target(builder: Builder, value: str, *, tcp: bool = False,
            screen: bool = False) -> str:
    """An upstream URL, or `connector:<site>/<host>:<port>` (which needs `connector.listen`:
    without the listener no connector can ever dial in, and the route could only fail).
    `tcp://host:port` for `mode: tcp` routes only, which take no http(s) URL (config.tcp).
    `vnc://host:port` for `mode: screen` routes only: the gateway serves the screen page and
    filters the VNC protocol itself (gateway.screen), as it does for a screen route's
    `connector:` target; an http(s) screen route proxies to a screen-transfer product."""
    if value.lower().startswith(VNC_SCHEME):
        if not screen:
            raise Invalid("vnc:// は mode: screen のルートにだけ書けます",
                          "vnc:// targets need mode: screen")
        try:
            return VNC_SCHEME + parse_tcp_target("tcp://" + value[len(VNC_SCHEME):]).url[6:]
        except Invalid:
            raise Invalid("vnc://<ホスト>:<ポート> の形で書いてください（パスやユーザー名は"
                          "書けません）", "must be vnc://<host>:<port> (no path, user or query)"
                          ) from None
    if is_tcp_target(value) or (tcp and not is_connector_target(value)):
        if not tcp:
            raise Invalid("tcp:// は mode: tcp のルートにだけ書けます",
                          "tcp:// targets need mode: tcp")
        return parse_tcp_target(value).url
    if not is_connector_target(value):
        return parse_to(value)
    target = parse_connector_target(value)
    if not builder.section("connector").get("listen"):
        raise Invalid("connector: のルートには connector.listen の設定が必要です",
                      "a connector: route needs connector.listen (no connector can dial in)")
    return f"connector:{target.site}/{target.destination}"


def _mode(builder: Builder, entry: Mapping[str, Any], here: FieldPath
          ) -> tuple[RouteMode, ScreenOptions]:
    """`mode:` and, for screen routes, `screen:` (its options only mean something there)."""
    mode: RouteMode = entry["mode"] if entry.get("mode") in ("screen", "tcp") else "http"
    raw = entry.get("screen")
    if not isinstance(raw, Mapping):
        return mode, ScreenOptions()
    if mode != "screen":
        builder.problem((*here, "screen"), "screen は mode: screen のルートにだけ書けます",
                        "applies to mode: screen routes only")
    idle = raw.get("idle_timeout")
    return mode, ScreenOptions(**{name: raw.get(name) is True for name in
                                  ("clipboard", "file_transfer", "printing", "drive")},
                               idle_timeout=float(idle) if isinstance(idle, int | float)
                               and not isinstance(idle, bool) else SCREEN_IDLE_DEFAULT)


def _route_policy(
    builder: Builder,
    value: object,
    route_id: str,
    here: FieldPath,
    policies: dict[str, Mapping[str, Any]],
) -> str | None:
    if isinstance(value, str):
        if value not in policies:
            known = ", ".join(sorted(n for n in policies if not n.startswith(INLINE_PREFIX))) or "—"
            builder.problem(
                (*here, "policy"),
                f"ポリシー '{value}' が policies にありません（あるもの: {known}）",
                f"unknown policy '{value}' (defined: {known})",
            )
            return None
        return value
    if isinstance(value, Mapping):
        name = INLINE_PREFIX + route_id
        if name in policies:
            return None  # duplicate route id, already reported
        policies[name] = value
        return name
    return None


def compile_all(
    builder: Builder,
    policies: Mapping[str, Mapping[str, Any]],
    inline_paths: Mapping[str, FieldPath],
) -> None:
    """Deep-check every policy with the policy engine, reporting errors at their exact line."""
    import importlib

    from sekisho.policy.errors import PolicyError

    compile_policy = getattr(importlib.import_module("sekisho.policy"), "compile_policy", None)
    if compile_policy is None:  # engine still being written: structural checks only
        return
    for name, document in policies.items():
        base = inline_paths.get(name, ("policies", name))
        try:
            compile_policy(name, document)
        except PolicyError as exc:
            path = (*base, *exc.path)
            builder.problem(path, exc.message_ja, exc.message)
        except Exception as exc:  # fail closed: a policy the engine chokes on is not loaded
            builder.problem(
                base,
                f"ポリシーを検査できません（{type(exc).__name__}）",
                f"the policy could not be compiled ({type(exc).__name__})",
            )
