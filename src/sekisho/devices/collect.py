"""Collect this device's posture: read-only probes that need no administrator rights.

Rule: a probe that cannot tell answers `None` ("unknown"), never a guess: the gateway treats
unknown as failed, so an unreadable firewall table can only lower a device's profile. Every
collector returns the same fields (`posture.FIELDS` without `schema`, `device_id`, `nonce`,
`time`, which `build_report` adds). Linux is implemented; the Windows and macOS collectors are
documented probes (docs/devices.md lists the commands they would run) and raise
`NotImplementedError` until a native build implements them.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sekisho.devices.posture import SCHEMA_VERSION, format_time

DEFAULT_EDR_PROCESSES = ("clamd", "falcon-sensor", "mdatp", "wdavdaemon", "sentinelone",
                         "cbagentd", "elastic-endpoint", "osqueryd", "wazuh-agentd")
_UPDATE_STAMPS = ("/var/lib/dpkg/status", "/var/lib/rpm", "/var/lib/pacman/local",
                  "/var/lib/apk/db/installed")
_FIREWALL_PROBES = ("/proc/net/ip_tables_names", "/proc/net/ip6_tables_names")
_PROBE_TIMEOUT = 5.0


def collect(root: Path = Path("/"), *, edr_processes: Sequence[str] = DEFAULT_EDR_PROCESSES
            ) -> dict[str, Any]:
    """The posture fields for the running OS (`root` lets tests point at a fake tree)."""
    platform: str = sys.platform  # a plain str: every branch is checked on every OS
    if platform.startswith("linux"):
        return collect_linux(root, edr_processes=edr_processes)
    if platform == "win32":
        return collect_windows()
    if platform == "darwin":
        return collect_macos()
    raise NotImplementedError(f"unsupported platform: {platform}")


def build_report(fields: dict[str, Any], device_id: str, now: datetime) -> dict[str, Any]:
    """Add the schema version, device id, a fresh random nonce and the time."""
    return {**fields, "schema": SCHEMA_VERSION, "device_id": device_id,
            "nonce": secrets.token_hex(16), "time": format_time(now)}


def collect_linux(root: Path = Path("/"), *,
                  edr_processes: Sequence[str] = DEFAULT_EDR_PROCESSES) -> dict[str, Any]:
    name, version = _os_release(root)
    running = _running(root, edr_processes)
    return {
        "platform": "linux",
        "os_name": name,
        "os_version": version,
        "last_update": _last_update(root),
        "disk_encryption": _disk_encryption(root),
        "firewall": _firewall(root),
        "screen_lock": _screen_lock(),
        "edr": bool(running) if edr_processes else None,
        "edr_processes": sorted(running),
    }


def collect_windows() -> dict[str, Any]:
    """Documented probe (docs/devices.md): Get-CimInstance Win32_OperatingSystem,
    Get-HotFix, Get-BitLockerVolume, Get-NetFirewallProfile, the ScreenSaverIsSecure policy,
    Get-MpComputerStatus. Not implemented in this build."""
    raise NotImplementedError("Windows の収集は未実装です / the Windows collector is a "
                              "documented probe, not implemented in this build")


def collect_macos() -> dict[str, Any]:
    """Documented probe (docs/devices.md): sw_vers, softwareupdate --history, fdesetup status,
    socketfilterfw --getglobalstate, sysadminctl -screenLock status, pgrep for the EDR agents.
    Not implemented in this build."""
    raise NotImplementedError("macOS の収集は未実装です / the macOS collector is a documented "
                              "probe, not implemented in this build")


def _os_release(root: Path) -> tuple[str, str]:
    values: dict[str, str] = {}
    for candidate in ("etc/os-release", "usr/lib/os-release"):
        try:
            text = (root / candidate).read_text("utf-8", "replace")
        except OSError:
            continue
        for line in text.splitlines():
            key, sep, value = line.partition("=")
            if sep:
                values[key.strip()] = value.strip().strip("'\"")
        break
    return (values.get("NAME", "Linux")[:128],
            values.get("VERSION_ID", values.get("VERSION", ""))[:128])


def _last_update(root: Path) -> str | None:
    """The newest change to a package database: when packages were last installed/updated."""
    stamps = []
    for candidate in _UPDATE_STAMPS:
        try:
            stamps.append((root / candidate.lstrip("/")).stat().st_mtime)
        except OSError:
            continue
    return format_time(datetime.fromtimestamp(max(stamps), UTC)) if stamps else None


def _disk_encryption(root: Path) -> bool | None:
    block = root / "sys/block"
    try:
        devices = list(block.iterdir())
    except OSError:
        devices = []
    for device in devices:
        try:
            if (device / "dm" / "uuid").read_text("ascii", "replace").startswith("CRYPT-"):
                return True
        except OSError:
            continue
    if root != Path("/"):
        return False if devices else None
    lsblk = shutil.which("lsblk")
    if lsblk is None:
        return False if devices else None
    output = _run([lsblk, "-n", "-o", "TYPE"])
    if output is None:
        return False if devices else None
    return "crypt" in output.split()


def _firewall(root: Path) -> bool | None:
    """Rules present (nftables / iptables tables, or ufw enabled); None when unreadable."""
    ufw = root / "etc/ufw/ufw.conf"
    try:
        for line in ufw.read_text("utf-8", "replace").splitlines():
            if line.strip().replace(" ", "").lower() == "enabled=yes":
                return True
    except OSError:
        pass
    seen_probe = False
    for candidate in _FIREWALL_PROBES:
        try:
            text = (root / candidate.lstrip("/")).read_text("ascii", "replace")
        except OSError:
            continue
        seen_probe = True
        if text.strip():
            return True
    if root == Path("/") and (nft := shutil.which("nft")) is not None:
        output = _run([nft, "list", "tables"])
        if output is not None:
            return bool(output.strip())
    return False if seen_probe else None


def _screen_lock() -> bool | None:
    """GNOME's lock setting when gsettings exists and answers; otherwise unknown."""
    gsettings = shutil.which("gsettings")
    if gsettings is None or not os.environ.get("DBUS_SESSION_BUS_ADDRESS"):
        return None
    output = _run([gsettings, "get", "org.gnome.desktop.screensaver", "lock-enabled"])
    if output is None or output.strip() not in ("true", "false"):
        return None
    return output.strip() == "true"


def _running(root: Path, names: Sequence[str]) -> set[str]:
    # The kernel truncates comm to 15 bytes ("elastic-endpoint" reads "elastic-endpoin").
    wanted = {name[:15]: name for name in names}
    found: set[str] = set()
    try:
        entries = list((root / "proc").iterdir())
    except OSError:
        return found
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text("utf-8", "replace").strip()
        except OSError:
            continue  # the process ended, or /proc is hidepid
        if comm in wanted:
            found.add(wanted[comm])
    return found


def _run(argv: list[str]) -> str | None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=_PROBE_TIMEOUT,  # noqa: S603 (fixed argv, no shell)
                              check=False, env={**os.environ, "LC_ALL": "C"})
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None
