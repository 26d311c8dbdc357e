"""ragline check: each rule's fixtures (tests/checker_fixtures) fire exactly where they
say ``# expect: RLxxx``, and nowhere else; ragline's own tree is clean."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from ragline.checker import RULES, check_paths, check_source

FIXTURES = Path(__file__).parent / "checker_fixtures"
ROOT = Path(__file__).parent.parent
EXPECT = re.compile(r"# expect: (RL\d{3})")


def expected(path: Path) -> list[tuple[int, str]]:
    lines = path.read_text().splitlines()
    return [(n, m.group(1)) for n, line in enumerate(lines, 1) if (m := EXPECT.search(line))]


@pytest.mark.parametrize("rule", sorted(RULES))
def test_each_rule_fires_on_its_true_positives_and_not_on_its_near_misses(rule: str) -> None:
    path = FIXTURES / f"{rule.lower()}.py"
    found = [(f.line, f.rule) for f in check_paths([str(path)])]
    assert found == expected(path)
    assert any(r == rule for _, r in found), "a fixture without a true positive"
    lines = path.read_text().splitlines()
    assert len(lines) > len(found) + 5, "a fixture without near-misses"


def test_a_noqa_comment_skips_a_finding() -> None:
    source = (
        "import anyio\n"
        "async def f() -> None:\n"
        "    with anyio.CancelScope(shield=True):  # noqa: RL104\n"
        "        pass\n"
    )
    assert check_source(source) == []
    assert [f.rule for f in check_source(source.replace("  # noqa: RL104", ""))] == ["RL104"]


def test_rl101_knows_callees_in_other_files(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text(
        "from ragline import Lifetime\n"
        "async def fetch(lifetime: Lifetime | None = None) -> None: ...\n"
    )
    (tmp_path / "b.py").write_text(
        "from ragline import Lifetime\n"
        "from a import fetch\n"
        "async def handler(lifetime: Lifetime) -> None:\n"
        "    await fetch()\n"
    )
    assert [(Path(f.path).name, f.line, f.rule) for f in check_paths([str(tmp_path)])] == [
        ("b.py", 4, "RL101")
    ]


def test_ragline_holds_itself_to_it() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "ragline", "check", str(ROOT / "src")],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout


def test_the_command_exits_1_and_names_file_line_and_rule() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "ragline", "check", str(FIXTURES / "rl104.py")],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 1
    assert "rl104.py:9:10: RL104 a shield without a deadline" in out.stdout


def test_it_runs_as_a_flake8_plugin() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "flake8", "--select=RL", str(FIXTURES / "rl104.py")],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 1
    found = [line.split(": ", 1)[1][:5] for line in out.stdout.splitlines()]
    assert found == ["RL104", "RL104"]
