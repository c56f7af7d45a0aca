"""requirements.lock, which `make` installs, pins every dependency of pyproject.toml (the main
ones and the test and ray extras) at a version that satisfies it, and torch at 2.13.0; after a
change of dependencies `make lock` brings it up to date."""

from __future__ import annotations

from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

tomllib = pytest.importorskip("tomllib", reason="the lock is resolved for Python 3.11, which has tomllib")

REPO = Path(__file__).resolve().parents[1]
INSTALLED_EXTRAS = ("test", "ray")  # what the Makefile installs


def locked() -> dict[str, str]:
    """Package name -> exact version pinned in requirements.lock."""
    pins = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        if line and not line.startswith((" ", "#", "-")):
            name, _, version = line.partition("==")
            assert version, f"requirements.lock: {line!r} is not an exact pin"
            pins[canonicalize_name(name)] = version.strip()
    return pins


def test_every_dependency_is_pinned_at_a_version_it_allows():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    required = project["dependencies"] + [r for extra in INSTALLED_EXTRAS
                                          for r in project["optional-dependencies"][extra]]
    pins = locked()
    for text in required:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"pyproject.toml requires {text!r}, not in requirements.lock: run `make lock`"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"requirements.lock pins {name}=={pins[name]}, outside pyproject.toml's {text!r}: run `make lock`")


def test_torch_stays_at_the_version_on_disk():
    assert locked()["torch"] == "2.13.0"
