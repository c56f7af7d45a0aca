"""The repository explains itself: README, code, docs and every ``--help`` point only at files
inside the repository, and every ``docs/`` page and anchor they name exists."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

from av_grounding.cli import STAGES, build_parser

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
# References to material a user who clones the repository does not have.
OUTSIDE = re.compile(r"\.\./(?:shared|seeds)\b|\bSPEC\b|SPEC\.md|steering repository")
DOC_PATH = re.compile(r"\bdocs/([\w.-]+\.md)(?:#([\w-]+))?")
MARKDOWN_LINK = re.compile(r"\]\(([^)\s]+)\)")
TEXT_SUFFIXES = {".py", ".md", ".sh", ".txt", ".json", ".yaml", ".yml", ".toml", ".cfg", ".html"}


def repository_texts() -> dict[Path, str]:
    """Every text file a user reads or runs: top-level files and the source, docs, tests,
    benchmark and config folders (this test's own patterns excluded)."""
    files = [REPO / name for name in ("README.md", "Makefile", "dvc.yaml", "params.yaml", "pyproject.toml")]
    for folder in ("src", "stages", "docs", "tests", "benchmarks", "configs", "prompts"):
        files += [p for p in sorted((REPO / folder).rglob("*"))
                  if p.is_file() and p.suffix in TEXT_SUFFIXES and "__pycache__" not in p.parts]
    return {p: p.read_text(errors="replace") for p in files if p.exists() and p != Path(__file__).resolve()}


def github_anchors(markdown: str) -> set[str]:
    """Anchors GitHub gives the headings of a markdown page (lower case, punctuation dropped,
    spaces to dashes, ``-1``, ``-2`` ... for repeats); headings inside code fences do not count."""
    anchors: set[str] = set()
    fenced = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        if fenced or not re.match(r"#{1,6} ", line):
            continue
        slug = re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        candidate, repeat = slug, 0
        while candidate in anchors:
            repeat += 1
            candidate = f"{slug}-{repeat}"
        anchors.add(candidate)
    return anchors


def broken_doc_reference(page: str, anchor: str | None) -> str | None:
    """Why ``docs/<page>#<anchor>`` does not resolve, or None when it does."""
    path = DOCS / page
    if not path.is_file():
        return f"docs/{page} does not exist"
    if anchor and anchor not in github_anchors(path.read_text()):
        return f"docs/{page} has no heading with anchor #{anchor}"
    return None


def doc_references(text: str) -> list[tuple[str, str | None]]:
    return [(m.group(1), m.group(2)) for m in DOC_PATH.finditer(text)]


def help_texts() -> dict[str, str]:
    """What ``--help`` prints for the console script and for every stage."""
    texts = {"av-grounding": build_parser().format_help()}
    for stage in STAGES:
        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
            build_parser().parse_args([stage, "--help"])
        assert exit_info.value.code == 0
        texts[stage] = out.getvalue()
    return texts


def test_nothing_points_outside_the_repository():
    offenders = [f"{path.relative_to(REPO)}:{number}: {line.strip()}"
                 for path, text in repository_texts().items()
                 for number, line in enumerate(text.splitlines(), 1) if OUTSIDE.search(line)]
    assert not offenders, "references to files users do not have:\n" + "\n".join(offenders)


def test_every_stage_help_points_only_inside_the_repository():
    texts = help_texts()
    assert set(texts) == {"av-grounding", *STAGES}
    for name, text in texts.items():
        assert not OUTSIDE.search(text), f"{name} --help: {OUTSIDE.search(text).group(0)}"
        for page, anchor in doc_references(text):
            assert broken_doc_reference(page, anchor) is None, f"{name} --help: {broken_doc_reference(page, anchor)}"
    assert "docs/README.md" in texts["av-grounding"]
    assert "docs/conventions.md#box-codecs" in texts["transform"]


def test_every_docs_path_named_in_code_readme_and_docs_exists():
    problems = []
    for path, text in repository_texts().items():
        for page, anchor in doc_references(text):
            if (problem := broken_doc_reference(page, anchor)) is not None:
                problems.append(f"{path.relative_to(REPO)}: {problem}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("page", ["README.md", *sorted(p.name for p in DOCS.glob("*.md"))])
def test_markdown_links_resolve(page):
    """Relative links of README.md (from the repository root) and of the docs pages (from docs/)
    reach an existing file, and its heading when they name an anchor."""
    source = REPO / page if page == "README.md" else DOCS / page
    problems = []
    for target in MARKDOWN_LINK.findall(source.read_text()):
        if re.match(r"[a-z]+://|mailto:", target):
            continue
        file_part, _, anchor = target.partition("#")
        path = (source.parent / file_part).resolve() if file_part else source
        if path.parent == DOCS and path.suffix == ".md":
            problem = broken_doc_reference(path.name, anchor or None)
        elif not path.exists():
            problem = f"{file_part} does not exist"
        elif anchor and anchor not in github_anchors(path.read_text()):
            problem = f"{file_part or page} has no heading with anchor #{anchor}"
        else:
            problem = None
        if problem:
            problems.append(f"{page}: link {target}: {problem}")
    assert not problems, "\n".join(problems)


def test_the_docs_index_lists_every_page():
    index = (DOCS / "README.md").read_text()
    listed = set(re.findall(r"\]\(([\w.-]+\.md)\)", index))
    assert {p.name for p in DOCS.glob("*.md")} - {"README.md"} <= listed


def test_github_anchors_follow_github_rules():
    page = "# Title\n## FLU to RDF\n### `cosmos` codec: sizes\n```\n# not a heading\n```\n## FLU to RDF\n"
    assert github_anchors(page) == {"title", "flu-to-rdf", "cosmos-codec-sizes", "flu-to-rdf-1"}
