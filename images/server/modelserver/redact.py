"""Masking of personal data in log lines (--redact-logs): e-mail addresses, phone
numbers, ID and card numbers, and secrets that look like keys or bearer tokens."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]+"), "Bearer [KEY]"),
    (re.compile(r"\b(?:sk|pk|rk|api|key|tok)[-_][A-Za-z0-9_-]{12,}\b"), "[KEY]"),
    (re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"), "[EMAIL]"),
    # China resident ID (18 chars, last may be X) before generic digit runs
    (re.compile(r"\b\d{17}[\dXx]\b"), "[ID]"),
    # payment cards: 13–19 digits, optionally grouped by spaces or dashes
    (re.compile(r"\b(?:\d[ -]?){12,18}\d\b"), "[CARD]"),
    # US SSN
    (re.compile(r"\b\d{3}-\d{2}-\d{4}\b"), "[ID]"),
    # phone numbers: +country and/or grouped digits, at least 7 digits in all
    (re.compile(r"(?<![\w])\+?\d{1,3}[ .-]?\(?\d{2,4}\)?[ .-]?\d{3,4}[ .-]?\d{3,4}(?![\w])"),
     "[PHONE]"),
    (re.compile(r"\b1[3-9]\d{9}\b"), "[PHONE]"),  # mainland China mobile
]


def redact(text: str) -> str:
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    return text


def _redact_arg(value: Any) -> Any:
    # Numbers stay numbers: formatters read them as such (uvicorn's access formatter turns
    # the status code into an HTTPStatus); anything else is masked as the text it prints.
    if isinstance(value, bool | int | float) or value is None:
        return value
    return redact(value if isinstance(value, str) else str(value))


class RedactingFilter(logging.Filter):
    """Masks the record's message and its arguments in place. The arguments keep their
    shape: a formatter may unpack them (uvicorn's access log takes client, method, path,
    version and status from record.args), so they are masked one by one, not merged."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_redact_arg(a) for a in record.args)
        elif isinstance(record.args, Mapping):
            record.args = {k: _redact_arg(v) for k, v in record.args.items()}
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def install(handler_owners: list[logging.Logger] | None = None) -> None:
    """Attach the filter to every handler of the root and uvicorn loggers."""
    owners = handler_owners or [logging.getLogger(n) for n in
                                ("", "uvicorn", "uvicorn.error", "uvicorn.access")]
    f = RedactingFilter()
    for lg in owners:
        for h in lg.handlers:
            h.addFilter(f)
