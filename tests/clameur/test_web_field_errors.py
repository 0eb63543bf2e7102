"""``clameur.web.field_errors``: one naming of invalid fields for requests and for models."""

from __future__ import annotations

import pytest
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from clameur.web import field_errors


class _Page(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: int
    title: str

    @field_validator("title")
    @classmethod
    def _not_blank(cls, title: str) -> str:
        if not title.strip():
            raise ValueError("give a title")
        return title


def _model_error(**fields: object) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        _Page.model_validate(fields)
    return caught.value


def test_a_request_error_is_named_without_the_part_of_the_request() -> None:
    error = RequestValidationError(
        [
            {"loc": ("body", "consent", "updates"), "msg": "Input should be a valid boolean", "type": "bool"},
            {"loc": ("query", "page"), "msg": "Field required", "type": "missing"},
            {"loc": ("body",), "msg": "Field required", "type": "missing"},
            {"loc": ("body", "goal"), "msg": "Value error, give at least one field", "type": "value_error"},
        ]
    )
    assert field_errors(error) == [
        {"field": "consent.updates", "message": "Input should be a valid boolean"},
        {"field": "page", "message": "Field required"},
        {"field": "body", "message": "Field required"},
        {"field": "goal", "message": "give at least one field"},
    ]


def test_a_model_error_is_named_by_its_fields_alone_and_echoes_no_input() -> None:
    errors = field_errors(_model_error(path="not a number", title=" ", secret="hunter2"))
    assert {error["field"]: error["message"] for error in errors} == {
        "path": "Input should be a valid integer, unable to parse string as an integer",
        "title": "give a title",
        "secret": "Extra inputs are not permitted",
    }
    assert "hunter2" not in str(errors) and "not a number" not in str(errors)


def test_messages_replace_pydantic_words_by_error_type() -> None:
    error = _model_error(path=1, title="t", secret="x")
    errors = field_errors(error, messages={"extra_forbidden": "unknown"})
    assert errors == [{"field": "secret", "message": "unknown"}]
