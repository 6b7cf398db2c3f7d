"""`make bench`: every benchmark, each against its reference measured in the same run.

Runs the PDP (vs cedarpy; also with the device, time, segment and client-certificate
criteria), audit append (vs plain inserts), audit search and dashboard over 1,000,000 events
(vs `ORDER BY seq DESC LIMIT 50`), sign-in factors, proxy (vs direct, nginx and
Caddy with wrk) and mTLS (handshakes vs plain TLS; keep-alive throughput vs the gateway-core
baseline through an nginx TLS client), connector tunnel (vs plain loopback TCP) and the
connector decoder fuzz (1,000,000 inputs) and staff portal (1,000 routes, 10,000 users;
vs the portal's CSS on the same gateway) and TCP access (`sekisho tcp` direct and via a
connector vs `ssh -L`) and instructions per proxied request (callgrind; vs an nginx proxy
and a minimal Python proxy) benchmarks in turn and writes the combined figures to
bench/results/. `scripts/bench-deps` (run by `make bench`) installs wrk, nginx and Caddy.
Copy the summary into docs/benchmarks.md together with this command.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = ("bench_pdp", "bench_pdp_device", "bench_audit", "bench_audit_search", "bench_mfa",
           "bench_webauthn", "bench_proxy", "bench_mtls", "bench_connector_channel",
           "fuzz_connector", "bench_portal", "bench_tcp", "bench_instructions")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", choices=BENCHES, action="append",
                        help="run only this benchmark (repeatable)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(HERE))
    results: dict[str, object] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"python": platform.python_version(), "cpu": platform.processor(),
                    "system": platform.platform()},
    }
    for name in args.only or BENCHES:
        print(f"\n=== {name} ===", flush=True)
        module = importlib.import_module(name)
        results[name] = module.main([])
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    path = out / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2, ensure_ascii=False, default=str))
    print(f"\nresults written to {path.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
