"""`source_ip: CIDR | [CIDRS]` — the client's address (after trusted proxies) is in a range.

Ranges are merged at compile time into sorted integer intervals, one table per IP version,
so a lookup is one `bisect` whatever the list's length. IPv4-mapped IPv6 addresses
(`::ffff:192.0.2.1`) are treated as the IPv4 address they carry, on both sides: otherwise a
client reaching a dual-stack listener would slip past a `deny` on its IPv4 range, or miss an
`allow` on it (range bypass through address-family confusion).
"""

from __future__ import annotations

import ipaddress
from bisect import bisect_right
from typing import Any

from sekisho.policy.criteria._base import Criterion, Predicate, expect, string_list, timeless
from sekisho.policy.errors import Path
from sekisho.policy.facts import Facts

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def _network(value: str, path: Path) -> str:
    try:
        ipaddress.ip_network(value, strict=True)
    except ValueError as error:
        raise expect(
            path,
            f"expected an IP address or CIDR range like '192.0.2.0/24' or '2001:db8::/32' "
            f"with no host bits set, got {value!r} ({error})",
            f"'192.0.2.0/24' や '2001:db8::/32' のような IP アドレスまたは CIDR 範囲を"
            f"指定してください（ホスト部は 0）。指定値: {value!r}",
        ) from None
    return value


def _unmap(network: Network) -> Network:
    """Express a range inside ::ffff:0:0/96 as the IPv4 range it stands for."""
    if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(_MAPPED):
        start = ipaddress.IPv4Address(int(network.network_address) & 0xFFFFFFFF)
        return ipaddress.IPv4Network((start, network.prefixlen - 96))
    return network


def _intervals(networks: list[Network]) -> tuple[list[int], list[int]]:
    starts: list[int] = []
    ends: list[int] = []
    for net in ipaddress.collapse_addresses(networks):  # type: ignore[type-var]
        starts.append(int(net.network_address))
        ends.append(int(net.broadcast_address))
    return starts, ends


def _compile(argument: Any, path: Path) -> Predicate:
    texts = string_list(argument, path, "a CIDR range", "CIDR 範囲", _network)
    networks = [_unmap(ipaddress.ip_network(text)) for text in texts]
    v4_starts, v4_ends = _intervals([n for n in networks if n.version == 4])
    v6_starts, v6_ends = _intervals([n for n in networks if n.version == 6])
    v4 = ipaddress.IPv4Address

    def source_ip(facts: Facts) -> bool:
        address = facts.source_ip
        if address.__class__ is v4:
            starts, ends = v4_starts, v4_ends
        else:
            mapped = address.ipv4_mapped  # type: ignore[union-attr]
            if mapped is not None:
                address, starts, ends = mapped, v4_starts, v4_ends
            else:
                starts, ends = v6_starts, v6_ends
        number = int(address)
        index = bisect_right(starts, number) - 1
        return index >= 0 and number <= ends[index]

    return source_ip


CRITERION = Criterion(
    name="source_ip",
    passed_reason="source-ip-allowed",
    failed_reason="source-ip-denied",
    summary_ja="接続元 IP アドレスが一覧のいずれかの範囲に含まれれば一致します（IPv4・IPv6）。",
    summary_en="Matches when the source IP address is in any range listed (IPv4 and IPv6).",
    compile=_compile,
    reads_clock=timeless,
)
