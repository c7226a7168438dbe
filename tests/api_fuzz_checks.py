"""The project's error format as Schemathesis checks (loaded by ``st run`` through the
``SCHEMATHESIS_HOOKS`` module setting, see tests/test_api_fuzz.py): every error answer is JSON
``{"error": CODE, "detail": MESSAGE}`` whose detail is one line, without object reprs or long
echoes of the request, and the headers the service sets are documented."""
from __future__ import annotations

import json
import re

import schemathesis

OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-f]+>")


def error_body(response) -> dict | None:
    """The JSON body of an error answer (4xx/5xx), or None for a success."""
    if response.status_code < 400:
        return None
    try:
        body = json.loads(response.content)
    except ValueError:
        raise AssertionError(f"{response.status_code} answer is not JSON: {response.content[:200]!r}") from None
    if not isinstance(body, dict):
        raise AssertionError(f"{response.status_code} answer is JSON but not an object: {body!r:.200}")
    return body


@schemathesis.check
def error_is_json_with_code_and_detail(ctx, response, case):
    """4xx/5xx answers carry ``{"error": str, "detail": str}`` (README, "Errors")."""
    body = error_body(response)
    if body is not None and not (isinstance(body.get("error"), str) and isinstance(body.get("detail"), str)):
        raise AssertionError(f"{response.status_code} body lacks string 'error' and 'detail': {body!r:.300}")


def error_detail(response) -> str | None:
    body = error_body(response)
    detail = body.get("detail") if body is not None else None
    return detail if isinstance(detail, str) else None


@schemathesis.check
def error_detail_is_one_line(ctx, response, case):
    """One line: what a client logs (how long it may be: error_detail_quotes_no_long_value)."""
    detail = error_detail(response)
    if detail is not None and "\n" in detail:
        raise AssertionError(f"error detail spans {detail.count(chr(10)) + 1} lines: {detail[:300]!r}")


@schemathesis.check
def error_detail_has_no_object_repr(ctx, response, case):
    """No ``<_io.BytesIO object at 0x...>``: internals, and useless to the client."""
    detail = error_detail(response)
    if detail is not None and OBJECT_REPR.search(detail):
        raise AssertionError(f"error detail leaks an object repr: {detail!r}")


MAX_QUOTED_CHARS = 64  # the longest parameter value an error may quote whole (the model name's limit)


@schemathesis.check
def error_detail_quotes_no_long_value(ctx, response, case):
    """A parameter value longer than MAX_QUOTED_CHARS is not echoed whole (a 10,000-character
    model name once came back in full); it may be cut short."""
    detail = error_detail(response)
    if detail is None:
        return
    for name, value in (case.query or {}).items():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str) and len(item) > MAX_QUOTED_CHARS and any(
                    form[:MAX_QUOTED_CHARS + 1] in detail for form in (item, repr(item)[1:-1])):
                raise AssertionError(f"error detail quotes the {len(item)}-character {name} beyond "
                                     f"{MAX_QUOTED_CHARS} characters: {detail[:200]!r}...")


SERVICE_HEADERS = ("retry-after", "x-model", "x-scale", "x-backend", "x-precision", "x-inference-ms", "x-output-size")


@schemathesis.check
def service_headers_are_documented(ctx, response, case):
    """Headers the service sets (Retry-After, the X-* result headers) are in the OpenAPI response
    of that status, so clients generated from the schema see them."""
    responses = case.operation.definition.raw.get("responses", {})
    status = str(response.status_code)
    documented = responses.get(status) or responses.get(f"{status[0]}XX") or responses.get("default") or {}
    names = {name.lower() for name in documented.get("headers", {})}
    missing = [h for h in SERVICE_HEADERS if h in response.headers and h not in names]
    if missing:
        raise AssertionError(f"{status} answer sets {', '.join(missing)}, not documented for {status}")
