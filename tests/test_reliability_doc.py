"""docs/reliability.md stays true: every row names a test that exists (its function, and the case
when one is picked), and the totals add up."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import COLLECTED

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "reliability.md"
REFERENCE = re.compile(r"`(test_\w+\.py)::(\w+)(\[[^\]`]+\])?`")
# Tests that other branches add (named in their rows as "(branch X)"); the lead empties this set
# as those branches merge, after which each of them must exist like every other.
ELSEWHERE: set[str] = set()


def sections() -> dict[str, list[list[str]]]:
    """Table rows (their cells) under each ``##`` heading."""
    found: dict[str, list[list[str]]] = {}
    heading = None
    for line in DOC.read_text().splitlines():
        if line.startswith("## "):
            heading = line[3:]
            found[heading] = []
        elif re.match(r"^\| \d+ \|", line):
            found[heading].append([cell.strip() for cell in line.strip().strip("|").split(" | ")])
    return {name: rows for name, rows in found.items() if rows}


def all_rows() -> list[list[str]]:
    return [row for rows in sections().values() for row in rows]


def collected(files: set[str], config: pytest.Config) -> set[str]:
    """Node ids (``file::function[case]``) that pytest collects from ``files`` under tests/: this
    session's (``conftest.COLLECTED``) where it collected every one of them, as the whole suite
    does; otherwise from a ``pytest --collect-only`` of them (10 s)."""
    session = {node.removeprefix("tests/") for node in config.stash.get(COLLECTED, frozenset())}
    if all(any(node.startswith(f"{name}::") for node in session) for name in files):
        return session
    result = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                             *sorted(f"tests/{name}" for name in files)],
                            check=False, capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return {line.removeprefix("tests/") for line in result.stdout.splitlines() if "::" in line}


def test_rows_are_numbered_and_each_names_its_test():
    rows = all_rows()
    assert [int(row[0]) for row in rows] == list(range(1, len(rows) + 1))
    for row in rows:
        assert len(row) == 6, row
        assert len(REFERENCE.findall(row[5])) == 1, f"row {row[0]} must name one test: {row[5]}"


def test_every_named_test_exists(request):
    references = {"{}::{}{}".format(*REFERENCE.search(row[5]).groups(default="")): row for row in all_rows()}
    pending = {name for name in references if name.split("[")[0] in ELSEWHERE}
    assert {name.split("[")[0] for name in pending} == ELSEWHERE, "ELSEWHERE names a test no row refers to"
    for name in pending:
        assert "(branch " in references[name][5], f"row {references[name][0]}: say which branch adds {name}"
    ours = set(references) - pending
    tests_found = collected({name.split("::")[0] for name in ours}, request.config)
    missing = sorted(name for name in ours  # a function named without its case: any of its cases
                     if name not in tests_found and not any(found.startswith(f"{name}[") for found in tests_found))
    assert not missing, f"docs/reliability.md names tests that do not exist: {missing}"


def test_totals_add_up():
    counts = {name: len(rows) for name, rows in sections().items()}
    totals = DOC.read_text().split("## Totals", 1)[1]
    stated = re.search(r"(\d+) cases: (.*?)\. (\d+) are proved by tests in this repository(?:;\s+(\d+) "
                       r"\(rows ([\d, ]+)\))?", totals, re.S)
    assert stated, "the Totals paragraph changed its form"
    assert int(stated[1]) == sum(counts.values())
    parts = [re.match(r"(\d+) (.+)", part.strip()) for part in re.split(r",\s+", " ".join(stated[2].split()))]
    assert {m[2].lower(): int(m[1]) for m in parts} == {name.lower(): count for name, count in counts.items()}
    elsewhere = [int(row[0]) for row in all_rows() if "(branch " in row[5]]
    assert ([int(n) for n in stated[5].split(", ")] if stated[5] else []) == elsewhere
    assert (int(stated[3]), int(stated[4] or 0)) == (sum(counts.values()) - len(elsewhere), len(elsewhere))
