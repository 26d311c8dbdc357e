"""``ragline teams package``: the Teams app package that installs ragline's bot.

It writes a zip with ``manifest.json`` and the two icons, ready to upload in Teams
(Apps → Manage your apps → Upload an app) or to an organisation's app catalogue; see
docs/TEAMS.md. Every argument is checked before anything is written: a bad one is a
message and exit status 2, and the zip appears whole or not at all.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the command imports Pillow only when it runs
    from ..teams.manifest import App

__all__ = ["add_arguments", "run"]

_COLLECTION = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")  # as RAGLINE_COLLECTION
_STAMP = (2025, 1, 1, 0, 0, 0)  # every entry's time: the same arguments, the same bytes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The subcommands of ``ragline teams``."""
    actions = parser.add_subparsers(dest="action", required=True)
    package = actions.add_parser(
        "package", help="write the Teams app package (manifest.json and icons) to upload"
    )
    package.add_argument(
        "--app-id", help="the bot's Microsoft app id, a GUID (default: RAGLINE_BOT_APP_ID)"
    )
    package.add_argument(
        "--host", required=True, help="the domain ragline is served at, like bot.example.com"
    )
    package.add_argument("--name", default="ragline", help="the app's name (default ragline)")
    package.add_argument(
        "--out", default="ragline-teams.zip", help="the zip to write (default ragline-teams.zip)"
    )
    package.add_argument(
        "--collection",
        action="append",
        default=[],
        metavar="C",
        help="a collection to offer a prompt starter for (repeatable; default: the default "
        "collection, RAGLINE_COLLECTION)",
    )
    package.add_argument(
        "--version", default="1.0.0", help="the app's version X.Y.Z; raise it for every update"
    )
    package.add_argument(
        "--teams-app-id",
        help="the Teams app's own id, a GUID (default: derived from the app id, the same "
        "every time)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``ragline teams ACTION``; the exit status: 0, 1 when the zip could not be
    written, 2 for a bad argument or a missing Pillow (nothing is written then)."""
    try:
        from ..teams.icons import color_icon, outline_icon
    except ImportError:
        print("ragline teams: needs Pillow (pip install 'ragline[teams]')", file=sys.stderr)
        return 2
    from ..teams.manifest import ACCENT, COLOR_ICON, OUTLINE_ICON

    try:
        app = _app(args)
    except ValueError as exc:
        print(f"ragline teams package: {exc}", file=sys.stderr)
        return 2
    manifest = json.dumps(app.manifest(), indent=2, ensure_ascii=False) + "\n"
    files = {
        "manifest.json": manifest.encode(),
        COLOR_ICON: color_icon(ACCENT),
        OUTLINE_ICON: outline_icon(),
    }
    out = Path(args.out)
    try:
        _write_zip(out, files)
    except OSError as exc:
        print(f"ragline teams package: cannot write {out}: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {out}: the Teams app {app.teams_app_id} of the bot {app.bot_id} at {app.host}")
    return 0


def _app(args: argparse.Namespace) -> App:
    """The app the arguments describe; ``ValueError`` saying what is wrong with them."""
    from ..teams.manifest import App
    from ..teams.starters import MAX_STARTERS, prompt_starters

    default_collection = os.environ.get("RAGLINE_COLLECTION") or "default"
    collections = args.collection or [default_collection]
    app_id = args.app_id if args.app_id is not None else os.environ.get("RAGLINE_BOT_APP_ID")
    if not app_id:
        raise ValueError("the bot's app id is needed: --app-id or RAGLINE_BOT_APP_ID")
    for name in [*collections, default_collection]:
        if not _COLLECTION.fullmatch(name):
            raise ValueError(f"{name[:80]!r} is not a collection name")
    starters = prompt_starters(
        collections, limit=MAX_STARTERS, default_collection=default_collection
    )
    return App(
        bot_id=app_id,
        host=args.host,
        starters=starters,
        name=args.name,
        version=args.version,
        app_id=args.teams_app_id,
    )


def _write_zip(out: Path, files: Mapping[str, bytes]) -> None:
    """Write ``files`` into the zip ``out``: to a temporary file beside it first, then
    renamed, so that ``out`` is never half written."""
    handle, temporary = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    try:
        with os.fdopen(handle, "wb") as raw, zipfile.ZipFile(raw, "w") as archive:
            for name, data in files.items():
                entry = zipfile.ZipInfo(name, date_time=_STAMP)
                entry.external_attr = 0o644 << 16
                archive.writestr(entry, data, compress_type=zipfile.ZIP_DEFLATED)
        os.chmod(temporary, 0o644)
        os.replace(temporary, out)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
