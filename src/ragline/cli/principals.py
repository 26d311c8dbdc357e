"""``ragline principals …``: make, list, re-key and remove principals from the terminal.

The commands work on the deployment's own principal store (the SQLite file in
``RAGLINE_DATA_DIR``, or the PostgreSQL at ``RAGLINE_DATABASE_URL``), also while
servers run on it: they see a change within their 2 s cache. They go through
:class:`~ragline.principals.Principals`, so the rules are those of the HTTP routes (a
taken or reserved name, a principal declared in ``RAGLINE_PRINCIPALS_FILE``). A key is
printed once, when it is made; only its SHA-256 is stored. ``hash`` turns a key into
the ``key_sha256`` of a principals file.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the command imports its engines only when it runs
    from ..lifetime import Lifetime
    from ..principals import Principals

__all__ = ["add_arguments", "run"]

_MAX_KEY = 512  # what a server accepts in an Authorization header


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The subcommands of ``ragline principals``."""
    actions = parser.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="make a principal and print its key (shown once)")
    add.add_argument("name")
    add.add_argument(
        "--group", action="append", default=[], metavar="G", help="a group (repeatable)"
    )
    add.add_argument("--admin", action="store_true", help="an administrator (default: member)")
    add.add_argument("--quiet", action="store_true", help="print only the key (for scripts)")
    listing = actions.add_parser("list", help="every principal, without keys")
    listing.add_argument("--json", action="store_true", help="as JSON, like the HTTP API")
    remove = actions.add_parser("remove", help="revoke a principal and its key")
    remove.add_argument("name")
    rotate = actions.add_parser("rotate", help="a new key for a principal; the old one stops")
    rotate.add_argument("name")
    rotate.add_argument("--quiet", action="store_true", help="print only the key (for scripts)")
    hashing = actions.add_parser(
        "hash", help="the SHA-256 of a key read from stdin: key_sha256 of a principals file"
    )
    hashing.add_argument(
        "--new", action="store_true", help="make a new key: print it, then its SHA-256"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``ragline principals ACTION``; the exit status: 0, 1 when the store refused
    (a taken name, an unknown one, a bad name, a store that is down), 2 for settings or
    a principals file that cannot be used."""
    if args.action == "hash":
        return _hash(args.new)
    import anyio
    from pydantic import ValidationError

    from ..backend import build_backend
    from ..principals import Principals
    from ..settings import Settings
    from ..threads import ThreadBridge

    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"ragline: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    backend = build_backend(settings, ThreadBridge())
    try:  # the file's principals count too: their names are taken, they cannot change
        principals = Principals(
            settings.api_keys, backend.directory, principals_file=settings.principals_file
        )
    except ValueError as exc:  # a ConfigFileError: file:line: what
        print(f"ragline: {exc}", file=sys.stderr)
        return 2
    try:
        result: int = anyio.run(_act, _ACTIONS[args.action], args, backend.built, principals)
    except KeyboardInterrupt:
        return 130
    return result


Action = Callable[[argparse.Namespace, "Principals", "Lifetime"], Awaitable[int]]


async def _act(
    action: Action, args: argparse.Namespace, built: list[object], principals: Principals
) -> int:
    from contextlib import AsyncExitStack

    from ..errors import RagLineError
    from ..factory import open_parts
    from ..lifetime import Lifetime

    root = Lifetime.root("cli")
    result = 1
    try:
        async with AsyncExitStack() as stack:
            with root:
                await open_parts(stack, root, built, grace=5)
                result = await action(args, principals, root)
    except RagLineError as exc:  # no traceback: what was refused, and why
        print(f"ragline: {exc.message}", file=sys.stderr)
    return result


async def _add(args: argparse.Namespace, principals: Principals, lifetime: Lifetime) -> int:
    key = await principals.create(args.name, args.group, args.admin, lifetime)
    groups = ", ".join(sorted(set(args.group))) or "none"
    role = "admin" if args.admin else "member"
    _show_key(key, args.quiet, f"made principal {args.name} ({role}; groups: {groups})")
    return 0


async def _list(args: argparse.Namespace, principals: Principals, lifetime: Lifetime) -> int:
    entries = await principals.listing(lifetime)
    if args.json:
        print(json.dumps({"principals": entries}, indent=2))
        return 0
    if not entries:
        print("no principals (the keys of RAGLINE_API_KEYS are administrators)")
        return 0
    rows = [("NAME", "ROLE", "GROUPS", "FROM")]
    for entry in entries:
        groups = entry["groups"]
        assert isinstance(groups, list)
        role = "admin" if entry["admin"] else "member"
        source = "file" if entry["declared"] else "store"
        rows.append((str(entry["name"]), role, ",".join(groups) or "-", source))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True))
            + "  "
            + row[3]
        )
    return 0


async def _remove(args: argparse.Namespace, principals: Principals, lifetime: Lifetime) -> int:
    await principals.revoke(args.name, lifetime)
    print(
        f"removed principal {args.name}: running servers refuse its key within {principals.ttl:g} s"
    )
    return 0


async def _rotate(args: argparse.Namespace, principals: Principals, lifetime: Lifetime) -> int:
    key = await principals.rotate(args.name, lifetime)
    _show_key(
        key,
        args.quiet,
        f"new key for {args.name}: running servers refuse the old one within {principals.ttl:g} s",
    )
    return 0


_ACTIONS: dict[str, Action] = {"add": _add, "list": _list, "remove": _remove, "rotate": _rotate}


def _show_key(key: str, quiet: bool, headline: str) -> None:
    if quiet:
        print(key)
        return
    print(headline)
    print(f"key: {key}")
    print("This key is shown only now (the store keeps its SHA-256): keep it safe.")


def _hash(new: bool) -> int:
    from ..access import key_digest, new_key

    if new:
        key = new_key()
        print(key)
        print(key_digest(key))
        return 0
    if sys.stdin.isatty():
        import getpass

        text = getpass.getpass("key: ")  # not echoed, not in the shell's history
    else:
        text = sys.stdin.read()
    key = text.strip()  # as a server reads the Authorization header
    if not key or len(key) > _MAX_KEY or any(c.isspace() for c in key):
        print(
            f"ragline: give one key of 1 to {_MAX_KEY} characters without spaces on stdin",
            file=sys.stderr,
        )
        return 2
    print(key_digest(key))
    return 0
