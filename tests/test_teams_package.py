"""``ragline teams package``: a Teams app package that Microsoft's own validators accept.

The command runs as a subprocess, as a user runs it. The manifest is validated offline by
``@microsoft/teams-manifest`` and ``@microsoft/app-manifest`` from npm (pinned, installed
once per machine into a cache folder by the test setup, like the Agents Playground),
against the schema that ``@microsoft/app-manifest`` bundles: ``tests/teams_manifest/
validate.cjs``. Across ``ragline.cli.teams`` and ``ragline.teams.manifest``, ``icons`` and
``starters``."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from ragline.teams.manifest import SCHEMA_VERSION, derived_app_id
from ragline.teams.starters import MAX_STARTERS, MAX_TEXT, MAX_TITLE, Starter, prompt_starters

TEAMS_MANIFEST = "0.1.9"  # @microsoft/teams-manifest: ManifestUtil
APP_MANIFEST = "1.1.2"  # @microsoft/app-manifest: the bundled schemas, AppManifestUtils
CACHE = Path(os.environ.get("RAGLINE_NPM_CACHE", Path.home() / ".cache" / "ragline" / "npm"))
VALIDATE = Path(__file__).parent / "teams_manifest" / "validate.cjs"
BOT = "0f3a1c2e-5b6d-4e7f-8a9b-0c1d2e3f4a5b"
HOST = "bot.example.com"


@pytest.fixture(scope="module")
def validators() -> Path:
    """The npm prefix holding both validators, installed on first use."""
    folder = CACHE / f"teams-manifest-{TEAMS_MANIFEST}-app-manifest-{APP_MANIFEST}"
    if not (folder / "installed").exists():
        npm = shutil.which("npm")
        assert npm is not None, "npm is needed to install Microsoft's manifest validators"
        partial = folder.with_name(f"{folder.name}.{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        subprocess.run(
            [npm, "install", "--prefix", str(partial), "--no-audit", "--no-fund",
             f"@microsoft/teams-manifest@{TEAMS_MANIFEST}",
             f"@microsoft/app-manifest@{APP_MANIFEST}"],
            check=True,
            capture_output=True,
            timeout=300,
        )  # fmt: skip
        (partial / "installed").touch()  # a whole install, not one cut short
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)
    return folder


def validation_errors(validators: Path, manifest: dict[str, Any], tmp_path: Path) -> list[str]:
    """What Microsoft's validators find wrong with ``manifest`` (none: an empty list)."""
    file = tmp_path / "validated.json"
    file.write_text(json.dumps(manifest))
    done = subprocess.run(
        ["node", str(VALIDATE), str(validators), str(file)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["schema"].endswith(f"/v{SCHEMA_VERSION}/MicrosoftTeams.schema.json")
    errors: list[str] = report["errors"]
    return errors


def package(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``ragline teams package ARGS`` in ``tmp_path``, without the bot's settings."""
    environment = {
        key: value
        for key, value in os.environ.items()
        if key not in {"RAGLINE_BOT_APP_ID", "RAGLINE_COLLECTION"}
    }
    return subprocess.run(
        [sys.executable, "-m", "ragline", "teams", "package", *args],
        cwd=tmp_path,
        env=environment | env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def contents(zip_file: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(zip_file) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def rgba(image: Image.Image) -> list[tuple[int, int, int, int]]:
    """The pixels of an RGBA image."""
    data = image.tobytes()
    return [(data[i], data[i + 1], data[i + 2], data[i + 3]) for i in range(0, len(data), 4)]


def test_the_package_holds_a_manifest_microsoft_validates_and_two_icons(
    validators: Path, tmp_path: Path
) -> None:
    out = tmp_path / "app.zip"
    done = package(
        tmp_path,
        "--app-id", BOT.upper(), "--host", HOST, "--name", "Handbook bot", "--out", str(out),
        "--collection", "default", "--collection", "handbook", "--collection", "hr_policies",
        "--version", "1.2.3",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    files = contents(out)
    assert sorted(files) == ["color.png", "manifest.json", "outline.png"]

    color = Image.open(io.BytesIO(files["color.png"]))
    assert color.format == "PNG"
    assert color.size == (192, 192)
    assert color.mode in {"RGB", "RGBA"}
    assert len(set(rgba(color.convert("RGBA")))) > 2  # colour, not a silhouette
    outline = Image.open(io.BytesIO(files["outline.png"]))
    assert outline.format == "PNG"
    assert outline.size == (32, 32)
    assert outline.mode == "RGBA"
    pixels = rgba(outline)
    assert all(alpha == 0 or (r, g, b) == (255, 255, 255) for r, g, b, alpha in pixels)
    assert pixels[0][3] == 0  # a transparent background
    assert any(alpha == 255 for *_, alpha in pixels)  # and white where it is drawn

    manifest = json.loads(files["manifest.json"])
    assert manifest["manifestVersion"] == SCHEMA_VERSION
    assert manifest["version"] == "1.2.3"
    assert manifest["id"] == derived_app_id(BOT) != BOT
    assert manifest["name"]["short"] == "Handbook bot"
    assert manifest["icons"] == {"color": "color.png", "outline": "outline.png"}
    assert manifest["developer"]["privacyUrl"] == f"https://{HOST}/privacy"
    (bot,) = manifest["bots"]
    assert bot["botId"] == BOT
    assert set(bot["scopes"]) == {"personal", "team", "groupChat"}
    assert manifest["copilotAgents"] == {"customEngineAgents": [{"type": "bot", "id": BOT}]}
    assert manifest["validDomains"] == [HOST]
    (commands,) = bot["commandLists"]
    assert set(commands["scopes"]) == set(bot["scopes"])
    starters = prompt_starters(["default", "handbook", "hr_policies"], limit=MAX_STARTERS)
    assert commands["commands"] == [
        {"title": s.title, "description": s.text, "type": "prompt", "prompt": s.text}
        for s in starters
    ]
    assert validation_errors(validators, manifest, tmp_path) == []


def test_the_validators_do_find_mistakes(validators: Path, tmp_path: Path) -> None:
    assert package(tmp_path, "--app-id", BOT, "--host", HOST).returncode == 0
    manifest = json.loads(contents(tmp_path / "ragline-teams.zip")["manifest.json"])
    manifest["bots"][0]["botId"] = "not-a-guid"
    manifest["name"]["short"] = "x" * 31
    del manifest["developer"]
    errors = validation_errors(validators, manifest, tmp_path)
    for package_name in ("teams-manifest", "app-manifest"):
        found = [e for e in errors if e.startswith(f"{package_name}: ")]
        assert any("/bots/0/botId" in e for e in found), errors
        assert any("/name/short" in e for e in found), errors
        assert any("developer" in e for e in found), errors


def test_the_defaults_the_environment_and_a_given_teams_app_id(tmp_path: Path) -> None:
    done = package(tmp_path, "--host", HOST, RAGLINE_BOT_APP_ID=BOT, RAGLINE_COLLECTION="kb")
    assert done.returncode == 0, done.stderr
    first = contents(tmp_path / "ragline-teams.zip")
    manifest = json.loads(first["manifest.json"])
    assert manifest["bots"][0]["botId"] == BOT
    assert manifest["name"]["short"] == "ragline"
    assert manifest["version"] == "1.0.0"
    titles = [c["title"] for c in manifest["bots"][0]["commandLists"][0]["commands"]]
    assert titles == ["What is in the documents?", "What can you do?"]  # kb is the default

    assert package(tmp_path, "--host", HOST, "--app-id", BOT).returncode == 0
    again = contents(tmp_path / "ragline-teams.zip")
    assert again["color.png"] == first["color.png"]
    assert json.loads(again["manifest.json"])["id"] == manifest["id"]  # stable: an update

    teams_id = str(uuid.uuid4())
    assert (
        package(tmp_path, "--app-id", BOT, "--host", HOST, "--teams-app-id", teams_id).returncode
        == 0
    )
    assert json.loads(contents(tmp_path / "ragline-teams.zip")["manifest.json"])["id"] == teams_id


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "app id is needed"),
        (("--app-id", "my-bot"), "must be a GUID"),
        (("--app-id", BOT, "--host", "https://bot.example.com"), "no https://"),
        (("--app-id", BOT, "--host", "bot.example.com/api/messages"), "domain name"),
        (("--app-id", BOT, "--host", "bot.example.com:443"), "domain name"),
        (("--app-id", BOT, "--host", "localhost"), "domain name"),
        (("--app-id", BOT, "--host", "10.0.0.7"), "domain name"),
        (("--app-id", BOT, "--host", ""), "domain name"),
        (("--app-id", BOT, "--version", "1.0"), "X.Y.Z"),
        (("--app-id", BOT, "--name", "n" * 31), "1 to 30 characters"),
        (("--app-id", BOT, "--collection", "hr-policies"), "not a collection name"),
        (("--app-id", BOT, "--teams-app-id", "app"), "Teams app id must be a GUID"),
    ],
)
def test_a_bad_argument_is_exit_status_2_and_writes_nothing(
    tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    if "--host" not in args:
        args = (*args, "--host", HOST)
    done = package(tmp_path, *args)
    assert done.returncode == 2
    assert message in done.stderr
    assert done.stderr.startswith("ragline teams package: ")
    assert list(tmp_path.iterdir()) == []


def test_a_missing_host_is_exit_status_2(tmp_path: Path) -> None:
    done = package(tmp_path, "--app-id", BOT)
    assert done.returncode == 2
    assert "--host" in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_out_is_exit_status_1(tmp_path: Path) -> None:
    done = package(tmp_path, "--app-id", BOT, "--host", HOST, "--out", "missing/app.zip")
    assert done.returncode == 1
    assert "cannot write" in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_prompt_starters_name_the_collections_and_end_with_the_general_one() -> None:
    assert prompt_starters([]) == [
        Starter("What can you do?", "What can you answer questions about?")
    ]
    assert prompt_starters(["default", "handbook"]) == [
        Starter("What is in the documents?", "What is in the documents?"),
        Starter("Ask the handbook", "What do the handbook documents cover?"),
        Starter("What can you do?", "What can you answer questions about?"),
    ]
    assert prompt_starters(["docs", "default"], default_collection="docs")[0].title == (
        "What is in the documents?"
    )
    # The limit keeps the general starter; duplicates come once; the same input, the same list.
    many = [f"c{i}" for i in range(20)]
    assert [s.title for s in prompt_starters(many, limit=3)] == [
        "Ask the c0", "Ask the c1", "What can you do?",
    ]  # fmt: skip
    assert prompt_starters(["a", "a", "default", "default"], limit=10) == prompt_starters(
        ["a", "default"], limit=10
    )
    assert len(prompt_starters(many, limit=MAX_STARTERS)) == MAX_STARTERS
    for bad in (0, MAX_STARTERS + 1):
        with pytest.raises(ValueError, match="limit"):
            prompt_starters(many, limit=bad)


def test_long_collection_names_are_cut_to_the_manifest_limits() -> None:
    long = "quarterly_financial_reports_" + "x" * 200
    starter, _ = prompt_starters([long])
    assert len(starter.title) == MAX_TITLE
    assert starter.title.endswith("…")
    assert starter.title.startswith("Ask the quarterly financial")
    assert len(starter.text) <= MAX_TEXT
    assert starter.text.endswith("… documents cover?")
    # Two names that read the same once cut are offered once.
    assert len(prompt_starters([long + "a", long + "b"])) == 2
    with pytest.raises(ValueError, match="title"):
        Starter("t" * (MAX_TITLE + 1), "text")
