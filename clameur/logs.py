"""Structured logs: one JSON object per line, with the case, event, partition and offset
where they apply.  Never log an email address or a name: log ids and keys only.

An error's text is not safe to log: a pydantic ``ValidationError`` quotes the input it
refused (a name, an email), a database error may quote a row.  So errors are logged by
:func:`describe_error` (the type, and for a validation error where and why, never what),
and tracebacks lose their messages on the way out (docs/privacy.md, "Logs").
"""

from __future__ import annotations

import logging
import sys
import traceback

import structlog
from pydantic import ValidationError


def error_locations(error: BaseException) -> list[str]:
    """For a validation error, ``"<field path>:<error type>"`` per fault; else nothing.

    Only pydantic's ``loc`` and ``type``: never its ``msg`` or ``input``, which can
    echo the value refused (``"value is not a valid email address: ... 'a@b'"``).
    """
    if not isinstance(error, ValidationError):
        return []
    return [
        ".".join(str(part) for part in fault["loc"]) + ":" + fault["type"]
        for fault in error.errors(include_url=False, include_context=False, include_input=False)
    ]


def describe_error(error: BaseException) -> str:
    """What an operator may read about ``error`` without reading personal data.

    ``"TimeoutError"``; ``"ValidationError at email:value_error, first_name:string_too_long"``.
    """
    locations = error_locations(error)
    name = type(error).__name__
    return f"{name} at {', '.join(locations)}" if locations else name


def _without_error_text(_: object, __: str, event: structlog.types.EventDict) -> structlog.types.EventDict:
    """Replace ``exc_info`` by the traceback's frames and :func:`describe_error` of each
    error in the chain: where it failed stays readable, what it was given does not."""
    exc_info = event.pop("exc_info", None)
    if not exc_info:
        return event
    error: BaseException | None
    if isinstance(exc_info, BaseException):
        error = exc_info
    elif isinstance(exc_info, tuple):
        error = exc_info[1]
    else:
        error = sys.exc_info()[1]
    if error is not None:
        event["exception"] = _redacted_traceback(error)
    return event


def _redacted_traceback(error: BaseException) -> str:
    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        frames = "".join(traceback.format_tb(current.__traceback__))
        parts.append(f"Traceback (most recent call last):\n{frames}{describe_error(current)}")
        current = current.__cause__ or current.__context__
    return "\n\nwhile handling or caused by:\n".join(reversed(parts))


def configure_logging(service: str, *, level: str = "INFO", json: bool = True) -> None:
    """Route stdlib and structlog records through one JSON (or console) renderer.

    ``extra={...}`` fields of stdlib log calls become JSON members.
    """
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _without_error_text,
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            _add_service(service),
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiokafka is chatty at INFO about every coordinator hiccup.
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def _add_service(service: str) -> structlog.types.Processor:
    def add(_: object, __: str, event: structlog.types.EventDict) -> structlog.types.EventDict:
        event.setdefault("service", service)
        return event

    return add
