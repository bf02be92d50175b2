"""The documentation site builds with ``--strict``: a broken link, a missing anchor or a page left out of the nav fails."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT

MKDOCS = Path(sys.executable).with_name("mkdocs")


@pytest.fixture(scope="module")
def built_site(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    if not MKDOCS.is_file():
        pytest.skip("mkdocs is not installed (make install installs the docs extra)")
    site = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [str(MKDOCS), "build", "--strict", "--site-dir", str(site)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    return result, site


def test_the_docs_build_strictly(built_site):
    result, site = built_site
    assert result.returncode == 0, result.stdout + result.stderr
    assert (site / "index.html").is_file() and (site / "architecture" / "index.html").is_file()


def test_every_page_is_built(built_site):
    _, site = built_site
    pages = sorted(p.stem for p in (REPO_ROOT / "docs").glob("*.md"))
    missing = [page for page in pages if not (site / ("" if page == "index" else page) / "index.html").is_file()]
    assert not missing, f"pages not in the built site: {missing}"


def test_a_broken_link_fails_the_strict_build(tmp_path):
    """The check can fail: the same site with one link to a page that does not exist."""
    if not MKDOCS.is_file():
        pytest.skip("mkdocs is not installed")
    (tmp_path / "docs").mkdir()
    for page in (REPO_ROOT / "docs").iterdir():
        (tmp_path / "docs" / page.name).write_bytes(page.read_bytes())
    (tmp_path / "mkdocs.yml").write_text((REPO_ROOT / "mkdocs.yml").read_text())
    index = tmp_path / "docs" / "index.md"
    index.write_text(index.read_text() + "\nSee [a page that is not there](no-such-page.md).\n")
    result = subprocess.run(
        [str(MKDOCS), "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=tmp_path, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert result.returncode != 0
    assert "no-such-page.md" in result.stdout + result.stderr
