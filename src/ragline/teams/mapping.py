"""The Teams mapping file (``RAGLINE_TEAMS_MAPPING``, TOML; docs/TEAMS.md), checked.

Any error (bad TOML, an unknown table or key, a missing field, an id that is not an id,
a name that is not a name, a duplicate entry) raises
:class:`~ragline.config_file.ConfigFileError` naming the file and the line, so that the
server refuses to start with one line that says what to fix.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, NoReturn

from ..access import NAME, Principal
from ..config_file import ConfigFileError, entry_line, load_toml

__all__ = ["Channels", "Tenants", "Users", "parse_mapping"]

Users = dict[tuple[str, str], Principal]  # (tenant, Entra object id) -> principal
Tenants = dict[str, frozenset[str]]  # tenant -> groups of its other users
Channels = dict[tuple[str, str, str], tuple[str, ...]]  # (tenant, kind, id) -> collections

# table -> (required keys, optional keys)
_TABLES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "user": (("tenant", "aad_object_id", "name"), ("groups",)),
    "tenant": (("tenant",), ("groups",)),
    "channel": (("tenant", "collections"), ("team", "conversation")),
}
_GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_COLLECTION = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")  # models.CollectionName


def parse_mapping(path: str | Path) -> tuple[Users, Tenants, Channels]:
    """The users, tenants and channels of the file at ``path``."""
    data, text = load_toml(path)
    reader = _Reader(Path(path), text)
    for table, value in data.items():
        if table not in _TABLES:
            reader.fail(
                reader.top_line(table),
                f"unknown table {table!r} (expected [[user]], [[tenant]] or [[channel]])",
            )
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            reader.fail(reader.top_line(table), f"{table!r} is a list of tables: [[{table}]]")
    return reader.users(data), reader.tenants(data), reader.channels(data)


class _Reader:
    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.lines = text.splitlines()
        self.text = text

    # -- the three tables -------------------------------------------------------------
    def users(self, data: dict[str, Any]) -> Users:
        users: Users = {}
        seen: dict[tuple[str, str], int | None] = {}
        names: dict[str, int | None] = {}
        for index, entry in enumerate(data.get("user", [])):
            self.keys(entry, "user", index)
            tenant = self.guid(entry, "user", index, "tenant")
            aad = self.guid(entry, "user", index, "aad_object_id")
            name = self.name(entry, "user", index)
            groups = self.groups(entry, "user", index)
            here = self.line("user", index)
            if (tenant, aad) in seen:
                self.fail(
                    here, f"user {aad} of tenant {tenant} is mapped twice{_at(seen[tenant, aad])}"
                )
            if name in names:
                self.fail(
                    self.line("user", index, "name"),
                    f"the name {name!r} is given twice{_at(names[name])}",
                )
            seen[tenant, aad], names[name] = here, here
            users[tenant, aad] = Principal(name, groups)
        return users

    def tenants(self, data: dict[str, Any]) -> Tenants:
        tenants: Tenants = {}
        seen: dict[str, int | None] = {}
        for index, entry in enumerate(data.get("tenant", [])):
            self.keys(entry, "tenant", index)
            tenant = self.guid(entry, "tenant", index, "tenant")
            groups = self.groups(entry, "tenant", index)
            here = self.line("tenant", index)
            if tenant in seen:
                self.fail(here, f"tenant {tenant} has two [[tenant]] entries{_at(seen[tenant])}")
            seen[tenant] = here
            tenants[tenant] = groups
        return tenants

    def channels(self, data: dict[str, Any]) -> Channels:
        channels: Channels = {}
        seen: dict[tuple[str, str, str], int | None] = {}
        for index, entry in enumerate(data.get("channel", [])):
            self.keys(entry, "channel", index)
            tenant = self.guid(entry, "channel", index, "tenant")
            if "team" in entry and "conversation" in entry:
                self.fail(
                    self.line("channel", index, "conversation"),
                    "a [[channel]] entry names a team or a conversation, not both",
                )
            kind = "team" if "team" in entry else "conversation" if "conversation" in entry else ""
            ident = self.text_of(entry, "channel", index, kind) if kind else ""
            key = (tenant, kind, ident)
            here = self.line("channel", index)
            if key in seen:
                what = f"{kind} {ident}" if kind else f"tenant {tenant} (no team or conversation)"
                self.fail(here, f"{what} has two [[channel]] entries{_at(seen[key])}")
            seen[key] = here
            channels[key] = self.collections(entry, index)
        return channels

    # -- values -----------------------------------------------------------------------
    def keys(self, entry: dict[str, Any], table: str, index: int) -> None:
        required, optional = _TABLES[table]
        for key in entry:
            if key not in required + optional:
                expected = ", ".join(required + optional)
                self.fail(
                    self.line(table, index, key),
                    f"unknown key {key!r} in [[{table}]] (expected {expected})",
                )
        for key in required:
            if key not in entry:
                self.fail(self.line(table, index), f"[[{table}]] needs {key!r}")

    def text_of(self, entry: dict[str, Any], table: str, index: int, key: str) -> str:
        value = entry[key]
        if not isinstance(value, str) or not value.strip() or len(value) > 1024:
            self.fail(self.line(table, index, key), f"{key!r} must be a non-empty string")
        return value.strip()

    def guid(self, entry: dict[str, Any], table: str, index: int, key: str) -> str:
        value = self.text_of(entry, table, index, key).lower()
        if not _GUID.match(value):
            self.fail(
                self.line(table, index, key),
                f"{key!r} must be an id like 72f988bf-86f1-41af-91ab-2d7cd011db47, "
                f"not {value[:80]!r}",
            )
        return value

    def name(self, entry: dict[str, Any], table: str, index: int) -> str:
        name = self.text_of(entry, table, index, "name")
        line = self.line(table, index, "name")
        if not NAME.match(name):
            self.fail(line, f"{name[:80]!r} is not a name (letters, digits, . _ @ -, at most 128)")
        if name.startswith(("teams-", "admin-")) or name == "local":
            self.fail(line, f"the name {name!r} is reserved (teams-…, admin-…, local)")
        return name

    def groups(self, entry: dict[str, Any], table: str, index: int) -> frozenset[str]:
        groups = entry.get("groups", [])
        line = self.line(table, index, "groups")
        if not isinstance(groups, list):
            self.fail(line, "'groups' must be a list of names")
        for group in groups:
            if not isinstance(group, str) or not NAME.match(group):
                self.fail(line, f"group {str(group)[:80]!r} is not a name")
        return frozenset(groups)

    def collections(self, entry: dict[str, Any], index: int) -> tuple[str, ...]:
        found = entry["collections"]
        line = self.line("channel", index, "collections")
        if not isinstance(found, list) or not found:
            self.fail(line, "'collections' must be a non-empty list of collection names")
        for name in found:
            if not isinstance(name, str) or not _COLLECTION.match(name):
                self.fail(line, f"{str(name)[:80]!r} is not a collection name")
        return tuple(dict.fromkeys(found))

    # -- where ------------------------------------------------------------------------
    def fail(self, line: int | None, problem: str) -> NoReturn:
        raise ConfigFileError(self.path, line, problem)

    def top_line(self, key: str) -> int | None:
        """The first line that opens table ``key`` or assigns it."""
        pattern = re.compile(
            rf"^\s*(\[\[?\s*{re.escape(key)}\s*[\].]|[\"']?{re.escape(key)}[\"']?\s*=)"
        )
        return next((n for n, line in enumerate(self.lines, 1) if pattern.match(line)), None)

    def line(self, table: str, index: int, key: str | None = None) -> int | None:
        """The line of entry ``index`` of ``[[table]]``, or of its ``key``."""
        header = entry_line(self.text, table, index)
        if header is None:  # an inline array of tables: point at it
            return self.top_line(table)
        if key is None:
            return header
        pattern = re.compile(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*=")
        for number in range(header + 1, len(self.lines) + 1):
            text = self.lines[number - 1]
            if text.lstrip().startswith("["):
                break
            if pattern.match(text):
                return number
        return header


def _at(line: int | None) -> str:
    return f" (first at line {line})" if line is not None else ""
