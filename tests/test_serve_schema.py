"""The server against its own OpenAPI schema with schemathesis: generated requests of every route
never get a 5xx, and every response conforms to the schema (status codes, content types, bodies)."""

import pytest
from hypothesis import HealthCheck, settings

from serving import GENERATION, METHODS, SENTIMENT, make_prompt
from softprompt.engine import Engine
from softprompt.serve import PromptRegistry, ServeSettings, create_app
from tiny import tiny_base


def _app(tmp_path_factory):
    folder = tmp_path_factory.mktemp("schema")
    base = tiny_base("llama")
    registry = PromptRegistry(base, Engine(base, max_queue=64))
    registry.add_file("sentiment", make_prompt(base, folder / "s.safetensors", METHODS["prefix_tuning"], SENTIMENT))
    registry.add_file("answers", make_prompt(base, folder / "g.safetensors", METHODS["prompt_tuning"], GENERATION))
    registry.add_base()
    return create_app(registry, ServeSettings(max_tokens=8, timeout=30, admin_token="token"))


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory, missing_tool):
    try:
        import schemathesis
    except ImportError:  # a skip here, a failure under CI=true
        missing_tool("schemathesis", "pip install -e '.[dev]' (make test does)")
    return schemathesis.openapi.from_asgi("/openapi.json", _app(tmp_path_factory))


def test_no_server_errors_and_responses_conform(api_schema):
    """Every operation, with schemathesis' generated cases (driven by hypothesis here: its pytest plugin
    does not support this pytest yet)."""
    from hypothesis import given
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,
                                                   status_code_conformance)

    from schemathesis.generation.modes import GenerationMode

    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/completions", "/v1/chat/completions", "/v1/classify", "/v1/tag",
                                              "/v1/models", "/admin/prompts", "/health"}
    # positive cases fit the schema; negative ones break a body's schema (wrong types, missing fields,
    # bodies of other shapes) and must still get a declared status in OpenAI's error shape, never a 5xx
    bodies = [op for op in operations if op.method.upper() == "POST"]  # nothing else can be broken
    for mode, examples, chosen in ((GenerationMode.POSITIVE, 40, operations), (GenerationMode.NEGATIVE, 20, bodies)):
        for operation in chosen:
            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            def run(case):
                case.call_and_validate(checks=checks)

            run()
