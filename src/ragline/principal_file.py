"""The principals file (``RAGLINE_PRINCIPALS_FILE``, TOML): principals declared by
deployments configured as code, each a name, groups, a role and the SHA-256 of its key,
never the key. A file with an error refuses to start, naming the file and the line."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, NoReturn

from .access import LOCAL, NAME, Principal
from .config_file import ConfigFileError, entry_line, load_toml

__all__ = ["RULE", "read_principals_file"]

log = logging.getLogger("ragline.access")

RULE = "letters, digits, . _ @ -, at most 128, starting with a letter or digit"

_KEYS = ("name", "key_sha256", "groups", "admin")
_DIGEST = re.compile(r"^[0-9A-Fa-f]{64}$")


def read_principals_file(path: str | Path) -> dict[str, Principal]:
    """The principals a principals file declares, by the SHA-256 (hex) of their keys.
    Each ``[[principal]]`` has ``name`` and ``key_sha256``, and may have ``groups`` and
    ``admin``. Any error raises :class:`~ragline.config_file.ConfigFileError` with the
    file and the line; no message repeats a ``key_sha256`` value (a key pasted there
    by mistake is a secret)."""
    file = Path(path)
    data, text = load_toml(file)
    reader = _FileReader(file, text)
    for table in data:
        if table != "principal":
            reader.fail(reader.top(table), f"unknown table {table!r} (expected [[principal]])")
    entries = data.get("principal", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        reader.fail(reader.top("principal"), "'principal' is a list of tables: [[principal]]")
    found: dict[str, Principal] = {}
    first: dict[str, int | None] = {}  # "name:…" and "key:…" -> the line of its entry
    for index, entry in enumerate(entries):
        principal, digest = reader.entry(entry, index)
        for seen, key, what in (
            (f"name:{principal.name}", "name", f"the name {principal.name!r}"),
            (f"key:{digest}", "key_sha256", "this key_sha256"),
        ):
            if seen in first:
                at = first[seen]
                reader.fail(
                    reader.line(index, key), f"{what} is declared twice (first at line {at})"
                )
            first[seen] = reader.line(index)
        found[digest] = principal
    log.info("principals file loaded", extra={"path": str(file), "principals": len(found)})
    return found


class _FileReader:
    def __init__(self, path: Path, text: str) -> None:
        self.path, self.text, self.lines = path, text, text.splitlines()

    def entry(self, entry: dict[str, Any], index: int) -> tuple[Principal, str]:
        for key in entry:
            if key not in _KEYS:
                self.fail(
                    self.line(index, key),
                    f"unknown key {key!r} in [[principal]] (expected {', '.join(_KEYS)})",
                )
        for key in ("name", "key_sha256"):
            if key not in entry:
                self.fail(self.line(index), f"[[principal]] needs {key!r}")
        name = entry["name"]
        if not isinstance(name, str) or not NAME.fullmatch(name):
            self.fail(self.line(index, "name"), f"{str(name)[:80]!r} is not a name ({RULE})")
        if name == LOCAL.name or name.startswith(("admin-", "teams-")):
            self.fail(self.line(index, "name"), f"the name {name!r} is reserved")
        digest = entry["key_sha256"]
        if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
            self.fail(
                self.line(index, "key_sha256"),
                "'key_sha256' must be 64 hex digits, the SHA-256 of the key "
                "(`ragline principals hash`), never the key itself",
            )
        groups = entry.get("groups", [])
        if not isinstance(groups, list):
            self.fail(self.line(index, "groups"), "'groups' must be a list of names")
        for group in groups:
            if not isinstance(group, str) or not NAME.fullmatch(group):
                self.fail(self.line(index, "groups"), f"group {str(group)[:80]!r} is not a name")
        admin = entry.get("admin", False)
        if not isinstance(admin, bool):
            self.fail(self.line(index, "admin"), "'admin' must be true or false")
        return Principal(name, frozenset(groups), admin), digest.lower()

    def fail(self, line: int | None, problem: str) -> NoReturn:
        raise ConfigFileError(self.path, line, problem)

    def top(self, key: str) -> int | None:
        """The first line that opens table ``key`` or assigns it."""
        pattern = re.compile(
            rf"^\s*(\[\[?\s*{re.escape(key)}\s*[\].]|[\"']?{re.escape(key)}[\"']?\s*=)"
        )
        return next((n for n, line in enumerate(self.lines, 1) if pattern.match(line)), None)

    def line(self, index: int, key: str | None = None) -> int | None:
        """The line of the ``index``-th ``[[principal]]``, or of its ``key``."""
        header = entry_line(self.text, "principal", index)
        if header is None:  # an inline array of tables: point at it
            return self.top("principal")
        if key is not None:
            pattern = re.compile(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*=")
            for number in range(header + 1, len(self.lines) + 1):
                if self.lines[number - 1].lstrip().startswith("["):
                    break
                if pattern.match(self.lines[number - 1]):
                    return number
        return header
