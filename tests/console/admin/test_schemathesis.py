"""Schemathesis against the spec the gateway serves, through a real `sekisho serve`: for every
operation, valid inputs and invalid ones, with a superadmin token. Checks: no server error,
only documented statuses, answers matching their schemas and content types. A bounded,
derandomised number of examples per operation keeps the run well under 90 s."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

sys.path.insert(0, str(Path(__file__).parent))
from admin_gateway import AdminGateway, start

from sekisho.console.admin import load_operations
from sekisho.console.admin.ops import REGISTRY

load_operations()

EXAMPLES = {GenerationMode.POSITIVE: 6, GenerationMode.NEGATIVE: 6}  # per operation
CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance,
          content_type_conformance]
BUDGET = 90.0  # seconds for the whole run


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AdminGateway]:
    found = start(tmp_path_factory.mktemp("schemathesis"))
    try:
        yield found
    finally:
        found.stop()


@dataclass
class Served:
    """The spec as the gateway serves it (public: fetched without credentials), its
    operations by id, and the time spent so far."""

    gateway: AdminGateway
    operations: dict[str, Any]
    headers: dict[str, str]
    verify: str
    spent: list[float] = field(default_factory=list)


@pytest.fixture(scope="module")
def served(gateway: AdminGateway) -> Served:
    answer = gateway.call("GET", "/openapi.json", None)
    assert answer.status == 200
    schema = schemathesis.openapi.from_dict(answer.json())
    operations = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        operations[operation.definition.raw["operationId"]] = operation
    headers = {"Host": gateway.host, "Accept": "application/json",
               "Authorization": f"Bearer {gateway.tokens['superadmin']}"}
    cert = gateway.process.tmp / "data" / "tls" / "self-signed.crt"
    return Served(gateway, operations, headers, str(cert))


@pytest.mark.parametrize("op_id", sorted(REGISTRY))
def test_generated_requests_hold_to_the_served_spec(served: Served, op_id: str) -> None:
    started = time.monotonic()
    operation = served.operations[op_id]  # every registered operation is in the served spec
    try:
        for mode, examples in EXAMPLES.items():
            _exercise(operation, mode, examples, served.gateway.base_url, served.headers,
                      served.verify)
    finally:
        served.spent.append(time.monotonic() - started)


def test_the_whole_run_stays_within_its_budget(served: Served) -> None:
    """Runs last in this file: the sum over every operation above."""
    assert len(served.spent) == len(REGISTRY) >= 4
    total = sum(served.spent)
    print(f"schemathesis: {len(served.spent)} operations, at most {sum(EXAMPLES.values())} "
          f"examples each, {total:.1f} s")
    assert total < BUDGET


def _exercise(operation: Any, mode: GenerationMode, examples: int, base_url: str,
              headers: dict[str, str], verify: str) -> None:
    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case: Any) -> None:
        sent = {**(case.headers or {}), **headers}
        response = case.call(base_url=base_url, headers=sent, verify=verify)
        case.validate_response(response, checks=CHECKS)
        if response.status_code >= 400:  # every refusal: a code and a message
            error = response.json()["error"]
            assert isinstance(error, dict | str), response.text
            if isinstance(error, dict):
                assert error["code"] and error["message"], response.text

    check()
