"""JSON Schema of a result line (the documented format); tests validate every line."""

from typing import Any

import jsonschema

_ERROR = {
    "type": ["object", "null"],
    "required": ["code", "message"],
    "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
    "additionalProperties": False,
}
RESULT_LINE: dict[str, Any] = {
    "type": "object",
    "required": ["custom_id", "index", "status", "output", "finish_reason", "usage", "error"],
    "properties": {
        "custom_id": {"type": "string", "minLength": 1},
        "index": {"type": "integer", "minimum": 0},
        "status": {"enum": ["succeeded", "failed", "cancelled", "expired", "pending"]},
        "output": {"type": ["string", "null"]},
        "outputs": {"type": "array", "items": {"type": "string"}},
        "finish_reason": {"enum": ["stop", "length", None]},
        "usage": {
            "type": ["object", "null"],
            "required": ["prompt_tokens", "completion_tokens"],
            "properties": {
                "prompt_tokens": {"type": "integer", "minimum": 0},
                "completion_tokens": {"type": "integer", "minimum": 0},
            },
        },
        "error": _ERROR,
        "truncated": {"type": "boolean"},
    },
    "additionalProperties": False,
    "allOf": [
        {
            "if": {"properties": {"status": {"const": "succeeded"}}},
            "then": {
                "properties": {
                    "output": {"type": "string"},
                    "error": {"type": "null"},
                    "usage": {"type": "object"},
                }
            },
            "else": {"properties": {"error": {"type": "object"}}},
        }
    ],
}


# Built once: `jsonschema.validate` checks the schema itself on every call (~6 ms a
# line), which dominated tests that validate thousands of lines.
jsonschema.validators.validator_for(RESULT_LINE).check_schema(RESULT_LINE)
_VALIDATOR = jsonschema.validators.validator_for(RESULT_LINE)(RESULT_LINE)


def validate_line(line: dict[str, Any]) -> None:
    _VALIDATOR.validate(line)
