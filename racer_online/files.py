"""Reading the files users hand in: files named by settings (the Kafka and Redis client
options) and the CSV files of the offline commands."""

from __future__ import annotations

import csv
from pathlib import Path

from racer_online.errors import ConfigError, InvalidInputError


def readable_file(path: Path | None, name: str) -> str | None:
    if path is None:
        return None
    if not path.exists():
        raise ConfigError(f"{name}: {path} not found")
    if not path.is_file():
        raise ConfigError(f"{name}: {path} is not a file")
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read {path}: {exc.strerror}") from None
    return str(path)


def why(exc: Exception) -> str:
    """The library's reason, on one line (OpenSSL's reasons name no secret)."""
    reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
    return " ".join(str(reason).split())


def read_csv(
    file: Path | str, *, what: str, error: type[InvalidInputError] = InvalidInputError
) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header and the non-blank rows of a CSV file, each row with the line it starts
    on; an unreadable, undecodable or empty file raises ``error`` naming ``what`` it is."""
    try:
        with open(file, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise error(f"{file}: the file is empty")
            rows, line = [], reader.line_num + 1
            for cells in reader:
                if any(c.strip() for c in cells):
                    rows.append((line, cells))
                line = reader.line_num + 1
    except OSError as exc:
        raise error(f"cannot read {what} {file}: {exc.strerror}") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise error(f"{file}: not a readable CSV file ({exc})") from None
    return header, rows
