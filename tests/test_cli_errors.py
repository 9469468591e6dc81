"""Exit codes are defined once (volbak.errors.EXIT_CODES): the README's table and the
CLI's help epilog must say exactly the same. No Docker engine needed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from volbak import errors
from volbak.cli import main
from volbak.errors import EXIT_CODES

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_table() -> list[tuple[str, str]]:
    text = README.read_text()
    section = text.split("\n## Exit codes\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    assert rows[:2] == ["| code | meaning |", "|---|---|"], rows[:2]
    out = []
    for row in rows[2:]:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert len(cells) == 2, row
        out.append((cells[0], cells[1]))
    return out


def test_readme_table_matches_exit_codes() -> None:
    assert readme_table() == EXIT_CODES


def help_epilog(text: str) -> list[tuple[str, str]]:
    lines = text.split("Exit codes:\n", 1)[1].splitlines()
    out = []
    for line in lines:
        if not line.strip():
            break
        m = re.fullmatch(r"\s+(\d+(?: / \d+)?)\s{2,}(.+)", line)
        assert m, line
        out.append((m[1], m[2]))
    return out


def test_help_epilog_matches_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert help_epilog(capsys.readouterr().out) == EXIT_CODES


def test_help_epilog_of_the_installed_command() -> None:
    # The way a user sees it: a real process, click's own terminal formatting.
    out = subprocess.run([sys.executable, "-m", "volbak", "--help"], check=True,
                         capture_output=True, text=True).stdout
    assert help_epilog(out) == EXIT_CODES


def test_every_error_class_has_a_listed_code() -> None:
    listed = {int(c) for code, _ in EXIT_CODES for c in code.split(" / ")}
    classes = [obj for obj in vars(errors).values()
               if isinstance(obj, type) and hasattr(obj, "exit_code")]
    assert classes
    for cls in classes:
        assert cls.exit_code in listed, cls.__name__


def test_codes_are_unique_and_ordered() -> None:
    firsts = [int(code.split(" / ")[0]) for code, _ in EXIT_CODES]
    assert firsts == sorted(set(firsts))
