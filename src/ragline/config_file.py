"""Configuration files (TOML) whose mistakes are reported as ``file:line: what``.

``tomllib`` says where a syntax error is; for a value that parses but means nothing
(an unknown key, a name that is not a name), :func:`entry_line` finds the line of the
entry it belongs to, so that a file with an error refuses to start with its file and
line, never a traceback.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

__all__ = ["ConfigFileError", "entry_line", "load_toml"]


class ConfigFileError(ValueError):
    """A configuration file that cannot be used: ``str()`` is ``file:line: what``."""

    def __init__(self, path: Path, line: int | None, problem: str) -> None:
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {problem}")
        self.path, self.line, self.problem = path, line, problem


def load_toml(path: str | Path) -> tuple[dict[str, Any], str]:
    """The file's tables and its text (for :func:`entry_line`)."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigFileError(file, None, f"cannot read it: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigFileError(file, None, "not UTF-8 text") from None
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as exc:
        line = getattr(exc, "lineno", None) or _line_in_message(str(exc))
        problem = getattr(exc, "msg", None) or re.sub(r"\s*\(at line.*\)$", "", str(exc))
        raise ConfigFileError(file, line, f"not valid TOML: {problem}") from None


def entry_line(text: str, table: str, index: int) -> int | None:
    """The line of the ``index``-th (from 0) ``[[table]]`` header in ``text``."""
    header = re.compile(rf"^\s*\[\[\s*{re.escape(table)}\s*\]\]")
    seen = -1
    for number, line in enumerate(text.splitlines(), 1):
        if header.match(line):
            seen += 1
            if seen == index:
                return number
    return None


def _line_in_message(message: str) -> int | None:
    found = re.search(r"at line (\d+)", message)
    return int(found[1]) if found else None
