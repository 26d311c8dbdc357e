"""Finding the files to ingest: given files, and directories walked with globs.

Nothing here reads a file's content (that is :mod:`ragline.documents`). Everything here is
synchronous: the caller runs it through the thread bridge.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from .models import DocumentProblem

__all__ = ["SUFFIXES", "discover", "find", "os_reason", "relative_name"]

SUFFIXES = frozenset({".txt", ".md", ".markdown", ".html", ".htm", ".pdf", ".jsonl"})
"""File suffixes :func:`ragline.documents.load` reads (compared case-insensitively)."""


def discover(
    paths: Sequence[str | Path], *, include: Sequence[str] = (), exclude: Sequence[str] = ()
) -> Iterator[Path]:
    """Files to load: each path given as a file, and the files under each directory.

    A directory is walked recursively in sorted order. A file under it is kept when its path
    relative to that directory matches one of ``include`` (default: the supported
    suffixes) and none of ``exclude``. Globs: ``*`` and ``?`` stay within a path segment,
    ``**`` spans segments (``**/drafts/**``), and a glob without ``/`` matches the file
    name at any depth (``*.tmp``). Hidden names (``.x``) are skipped unless given. Symlinked
    directories are not followed (the real one is walked if it is under the root); a
    symlinked file is kept only if it resolves under the root. A file reached twice is
    yielded once. Given paths are yielded even when missing: :func:`ragline.documents.load`
    reports them.
    """
    for found in find(paths, include, exclude):
        if isinstance(found, tuple):
            yield found[0]


def find(
    paths: Sequence[str | Path], include: Sequence[str] = (), exclude: Sequence[str] = ()
) -> Iterator[tuple[Path, Path | None] | DocumentProblem]:
    """(file, root) pairs to load, and the directories that could not be listed."""
    includes = [_glob(p) for p in include]
    excludes = [_glob(p) for p in exclude]
    seen: set[str] = set()

    def keep(relative: str) -> bool:
        if includes:
            wanted = any(_matches(g, relative) for g in includes)
        else:
            wanted = Path(relative).suffix.lower() in SUFFIXES
        return wanted and not any(_matches(g, relative) for g in excludes)

    def once(path: Path) -> bool:
        real = os.path.realpath(path)
        if real in seen:
            return False
        seen.add(real)
        return True

    for given in map(Path, paths):
        if not given.is_dir():
            if once(given):
                yield given, None
            continue
        real_root = Path(os.path.realpath(given))
        for item in _walk(given, given):
            if isinstance(item, DocumentProblem):
                yield item
                continue
            relative = item.relative_to(given).as_posix()
            if not keep(relative):
                continue
            # realpath, unlike Path.resolve in 3.11, returns on a symlink loop.
            if item.is_symlink() and not Path(os.path.realpath(item)).is_relative_to(real_root):
                continue
            if once(item):
                yield item, given


def _walk(directory: Path, root: Path) -> Iterator[Path | DocumentProblem]:
    try:
        with os.scandir(directory) as listing:
            entries = sorted(listing, key=lambda e: e.name)
    except OSError as exc:
        where = relative_name(directory, root) if directory != root else str(directory)
        yield DocumentProblem(where, None, f"unreadable directory: {os_reason(exc)}")
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        path = directory / entry.name
        try:
            is_dir = entry.is_dir(follow_symlinks=False)
            linked_dir = not is_dir and entry.is_symlink() and entry.is_dir()
        except OSError:
            is_dir = linked_dir = False
        if is_dir:
            yield from _walk(path, root)
        elif not linked_dir:
            yield path


def _glob(pattern: str) -> tuple[re.Pattern[str], bool]:
    """A glob as a regex, and whether it matches the file name only (no ``/`` in it)."""
    pattern = pattern.lstrip("/")
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and (close := pattern.find("]", i + 2)) != -1:
            body = pattern[i + 1 : close]
            body = "^" + body[1:] if body.startswith("!") else body
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = close + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out)), "/" not in pattern


def _matches(glob: tuple[re.Pattern[str], bool], relative: str) -> bool:
    regex, name_only = glob
    return regex.fullmatch(relative.rsplit("/", 1)[-1] if name_only else relative) is not None


def relative_name(path: Path, root: Path | None) -> str:
    if root is not None:
        try:
            return path.relative_to(root).as_posix()
        except ValueError:
            pass
    return path.name


def os_reason(exc: BaseException) -> str:
    detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
