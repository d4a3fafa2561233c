"""The documentation lists every public name, and CITATION.cff is valid CFF 1.2.0."""

import datetime
import importlib
import re
from pathlib import Path

import pytest
import yaml

import cellformer

ROOT = Path(__file__).parent.parent
MODULES = ["datasets", "pp", "model", "tokenizers", "nn", "module", "train", "bench", "pl", "tl"]


def test_every_public_name_is_in_the_api_reference():
    api = (ROOT / "docs" / "api.md").read_text()
    listed = set(re.findall(r"^\s+(?:\.\. py:data:: )?(\w+\.\w+)\s*$", api, flags=re.M))
    missing = [
        f"{name}.{item}"
        for name in MODULES
        for item in importlib.import_module(f"cellformer.{name}").__all__
        if f"{name}.{item}" not in listed
    ]
    assert not missing, f"add these to docs/api.md: {missing}"
    assert set(cellformer.__all__) == set(MODULES) | set(cellformer.ERRORS) | {"settings"}
    assert re.search(r"^\s+settings\s*$", api, re.M), "add cf.settings to docs/api.md"
    assert all(re.search(rf"^\s+{e}\s*$", api, re.M) for e in cellformer.ERRORS)


def test_every_tutorial_is_in_the_docs_toctree():
    index = (ROOT / "docs" / "index.md").read_text()
    tutorials = sorted(p.stem for p in (ROOT / "tutorials").glob("*.md"))
    assert tutorials, "no tutorials found"
    for stem in tutorials:
        assert f"tutorials/{stem}" in index, stem
        text = (ROOT / "tutorials" / f"{stem}.md").read_text()
        assert text.startswith("---\nfile_format: mystnb"), f"{stem} is not a MyST notebook"


# CFF 1.2.0 (citation-file-format.github.io): the required keys and the types of those used here
PERSON_KEYS = {"family-names", "given-names", "name", "affiliation", "orcid", "email"}


def _check_authors(authors, where):
    assert isinstance(authors, list) and authors, f"{where}: authors must be a non-empty list"
    for author in authors:
        assert set(author) <= PERSON_KEYS, (
            f"{where}: unknown author keys {set(author) - PERSON_KEYS}"
        )
        assert "name" in author or "family-names" in author, f"{where}: author without a name"


def test_citation_cff_is_valid():
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0"
    for key in ("message", "title", "authors"):
        assert cff.get(key), f"CITATION.cff needs {key!r}"
    _check_authors(cff["authors"], "authors")
    assert cff["type"] in {"software", "dataset"}
    assert str(cff["version"]) == cellformer.__version__
    # the release date agrees with the changelog (Keep a Changelog): while the version is not
    # released, its entries stand under "## [Unreleased]" and CITATION.cff has no date
    changelog = (ROOT / "CHANGELOG.md").read_text()
    released = re.search(
        rf"^## \[{re.escape(cellformer.__version__)}\] - (\d{{4}}-\d{{2}}-\d{{2}})$",
        changelog,
        re.M,
    )
    if released is None:
        assert re.search(r"^## \[Unreleased\]$", changelog, re.M), "CHANGELOG.md: no version"
        assert "date-released" not in cff, "CITATION.cff has a date for an unreleased version"
    else:
        assert str(cff["date-released"]) == released.group(1)
        datetime.date.fromisoformat(released.group(1))
    license_file = (ROOT / "LICENSE").read_text()
    assert cff["license"] == "BSD-3-Clause" and "BSD 3-Clause" in license_file
    for url_key in ("repository-code", "url"):
        assert str(cff[url_key]).startswith("https://")
    assert all(isinstance(k, str) for k in cff["keywords"])
    for i, reference in enumerate(cff["references"]):
        assert reference.get("type") and reference.get("title"), f"references[{i}]"
        _check_authors(reference["authors"], f"references[{i}]")
        if "doi" in reference:
            assert re.fullmatch(r"10\.\d{4,9}/\S+", str(reference["doi"])), reference["doi"]


@pytest.mark.parametrize("key", ["cff-version", "title"])
def test_citation_check_fails_without_a_required_key(key, tmp_path, monkeypatch):
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    del cff[key]
    (tmp_path / "CITATION.cff").write_text(yaml.safe_dump(cff))
    (tmp_path / "LICENSE").write_text((ROOT / "LICENSE").read_text())
    (tmp_path / "CHANGELOG.md").write_text((ROOT / "CHANGELOG.md").read_text())
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    with pytest.raises((AssertionError, KeyError)):
        test_citation_cff_is_valid()


def test_minimum_version_pins_are_the_declared_lower_bounds():
    """.ci/min-versions tests the lowest versions pyproject.toml allows: keep the two in step."""
    import tomllib

    from packaging.version import Version

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    bounds = {}
    for dep in deps:
        match = re.match(r"([A-Za-z0-9_.-]+)>=([0-9.]+)", dep)
        if match and match.group(1) != "torch":  # torch: the local CPU build, see the script
            bounds[match.group(1).lower()] = Version(match.group(2))
    pins = {}
    for line in (ROOT / ".ci" / "min-versions.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, pin = line.split("==")
            pins[name.strip().lower()] = Version(pin.strip())
    assert pins == bounds


def test_changelog_keeps_a_changelog():
    """CHANGELOG.md: version headings ``## [X.Y.Z] - date`` (or Unreleased), known sections."""
    text = (ROOT / "CHANGELOG.md").read_text()
    versions = re.findall(r"^## (.+)$", text, re.M)
    assert versions, "CHANGELOG.md has no version heading"
    for heading in versions:
        assert re.fullmatch(r"\[Unreleased\]|\[\d+\.\d+\.\d+\] - \d{4}-\d{2}-\d{2}", heading), (
            heading
        )
    sections = set(re.findall(r"^### (.+)$", text, re.M))
    assert sections <= {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}, sections
    for name in re.findall(r"^## \[(.+?)\]", text, re.M):  # each heading has its link
        assert re.search(rf"^\[{re.escape(name)}\]: https://", text, re.M), name
    # the docs page includes the root file rather than keeping a copy
    assert "../CHANGELOG.md" in (ROOT / "docs" / "changelog.md").read_text()
