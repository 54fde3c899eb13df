"""Schema fuzzing: schemathesis against the server's own OpenAPI document, every operation.

Valid and invalid requests (both generation modes) for each documented route, a bounded number
per operation, derandomized so CI runs the same examples every time. Every response must be
documented and match its schema; none may be a 5xx.
"""

from __future__ import annotations

import collections
import tempfile
from pathlib import Path

import httpx
import hypothesis
import pytest
import schemathesis
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from opendance.api.app import create_app
from opendance.config import Settings

MAX_EXAMPLES = 40  # per operation and generation mode
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


def _openapi_document() -> dict:
    """The document the server serves at /openapi.json, built from the app without starting it
    (pytest collects the operations before any server runs; ``test_document_is_the_served_one``
    proves it is the same document)."""
    return create_app(Settings(data_dir=Path(tempfile.gettempdir()) / "opendance-fuzz-schema")).openapi()


DOCUMENT = _openapi_document()
schema = schemathesis.openapi.from_dict(DOCUMENT)
schema.config.generation.update(
    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], max_examples=MAX_EXAMPLES, deterministic=True
)


def test_document_is_the_served_one(open_server):
    assert httpx.get(open_server.url + "/openapi.json").json() == DOCUMENT


@pytest.fixture(scope="module")
def sent():
    """Requests sent per operation; checked once the fuzzing of every operation is over, so a run
    that silently sent nothing fails. The total is the figure in docs/security.md."""
    counter: collections.Counter[str] = collections.Counter()
    yield counter
    print(f"\nschema fuzzing: {sum(counter.values())} requests over {len(counter)} operations: {dict(counter)}")
    assert len(counter) >= 10, counter
    assert all(n >= 5 for n in counter.values()), counter


@pytest.mark.timeout(240)
@schema.parametrize()
@hypothesis.settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(hypothesis.HealthCheck),
)
def test_every_operation_answers_within_its_schema(case, open_server, sent):
    response = case.call_and_validate(base_url=open_server.url, checks=CHECKS)
    sent[case.operation.label] += 1
    if response.status_code == 200 and case.method == "POST" and case.path == "/v1/video/generations":
        # The fuzzer made a real task: cancel it, the CPU is for fuzzing.
        httpx.post(f"{open_server.url}/v1/video/generations/{response.json()['id']}/cancel")
