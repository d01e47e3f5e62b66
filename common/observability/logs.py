"""JSON logs (python-json-logger) with secrets redacted before they are written."""

from __future__ import annotations

import logging
import re
import sys

from pythonjsonlogger.orjson import OrjsonFormatter

# Bearer credentials and our own key format; anything matching is masked in
# every log record, whatever logged it (our code, grpc, uvicorn).
_SECRET = re.compile(
    r"(?i)(bearer\s+)[^\s\"',]+"  # an Authorization header value
    r"|\bllmgw_[A-Za-z0-9]+_[A-Za-z0-9_\-]{40,}"  # our API keys: llmgw_<id>_<43-char secret>
    r"|\bsk-[A-Za-z0-9_\-]{16,}"  # OpenAI-style keys pasted by clients
)


def redact(text: str) -> str:
    """Mask credentials in ``text``."""
    return _SECRET.sub(lambda m: (m.group(1) or "") + "[REDACTED]", text)


class RedactSecrets(logging.Filter):
    """Rewrites a record's message and arguments with credentials masked."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Always keep the record, with secrets masked."""
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def configure_logging(service: str, level: str = "INFO") -> None:
    """One JSON object per line on stderr for every logger of the process."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        OrjsonFormatter(  # orjson: the access line is written once per request
            "{asctime}{levelname}{name}{message}",
            style="{",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            static_fields={"service": service},
        )
    )
    handler.addFilter(RedactSecrets())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
