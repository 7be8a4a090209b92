"""Result lines are checked against the one model that defines them (ResultLine), twice:
with the JSON schema derived from it, by an independent validator, and with the model's
own rules (e.g. a succeeded line has an output and usage, a failed one an error)."""

from typing import Any

import jsonschema

from genqueue.resultline import ResultLine

RESULT_LINE: dict[str, Any] = ResultLine.model_json_schema()

# Built once: `jsonschema.validate` checks the schema itself on every call (~6 ms a
# line), which dominated tests that validate thousands of lines.
jsonschema.validators.validator_for(RESULT_LINE).check_schema(RESULT_LINE)
_VALIDATOR = jsonschema.validators.validator_for(RESULT_LINE)(RESULT_LINE)


def validate_line(line: dict[str, Any]) -> None:
    _VALIDATOR.validate(line)
    ResultLine.model_validate(line, strict=True)
