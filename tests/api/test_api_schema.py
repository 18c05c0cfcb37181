"""Property-based requests over the live server's own OpenAPI schema (schemathesis):
whatever a client sends, the API answers with a documented status and body, never a 5xx.

Cases come from schemathesis' Hypothesis strategies, one valid and one invalid run per
operation, rather than from its pytest plugin: the plugin's lazy ``from_fixture`` (needed
for a schema served by a fixture's server) fails on pytest 9 (``Function`` has no
``_nodeid``), while ``as_strategy`` is the library's stable Python API.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from live_server import LiveServer
from schemathesis import Case, GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.result import Ok

from stepline import batch, step
from stepline.service import Stepline

W = "fixture_runners:"


def prepare(service: Stepline) -> None:
    service.apply(
        batch(
            "fuzzed",
            [step("a", W + "work", ["b"]), step("b", W + "work")],
            alerts=[{"type": "webhook", "url": "https://hooks.example.com/x?token=s3cr3t"}],
        )
    )
    for _ in range(3):
        service.trigger("fuzzed")


@pytest.fixture(scope="module")
def fuzz_server(start_server: Any) -> LiveServer:
    live: LiveServer = start_server(prepare)
    return live


# Beyond "no 5xx": every answer is one the schema documents, in the documented shape.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
EXAMPLES_PER_MODE = 4  # x 2 modes x 16 operations: at most 128 requests


def test_generated_requests_get_documented_answers_never_5xx(fuzz_server: LiveServer) -> None:
    api_schema = schemathesis.openapi.from_url(
        f"{fuzz_server.url}/openapi.json", headers=fuzz_server.auth, timeout=10
    )
    operations = []
    for result in api_schema.get_all_operations():
        assert isinstance(result, Ok), f"the served schema is invalid: {result.err()}"
        operations.append(result.ok())
    assert len(operations) == 16
    sent: list[str] = []

    for operation in operations:
        has_inputs = any(operation.iter_parameters()) or bool(
            operation.get_request_payload_content_types()
        )
        # An operation without parameters or body has no invalid request to generate.
        modes = [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if has_inputs else [])
        for mode in modes:

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=EXAMPLES_PER_MODE,
                deadline=None,
                derandomize=True,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def no_server_error(case: Case[Any]) -> None:
                sent.append(f"{case.method} {case.formatted_path}")
                response = case.call(headers=fuzz_server.auth, timeout=10)
                assert response.status_code < 500, (
                    f"{case.method} {case.formatted_path} -> {response.status_code}: "
                    f"{response.text}\n{case.as_curl_command(headers=fuzz_server.auth)}"
                )
                case.validate_response(response, checks=CHECKS, headers=fuzz_server.auth)

            no_server_error()
    assert len(sent) <= 2 * EXAMPLES_PER_MODE * len(operations)
