"""The documentation: the site builds with warnings as errors, every relative link and anchor in
the repository's Markdown resolves, and the README stays short."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]
README_MAX_LINES = 250


def _docs_site() -> ModuleType:
    """scripts/docs_site.py: the site's hooks, whose link and anchor rules the checks share."""
    spec = importlib.util.spec_from_file_location("docs_site", REPO / "scripts" / "docs_site.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


docs_site = _docs_site()


def markdown_pages(root: Path) -> list[str]:
    """The Markdown files of the repository (or of a folder laid out like it), as POSIX paths
    from its root: the root pages, docs/, benchmarks/, examples/ and the package's READMEs."""
    patterns = ["*.md", "docs/**/*.md", "benchmarks/*.md", "examples/**/*.md", "src/**/*.md"]
    found = {path for pattern in patterns for path in root.glob(pattern)}
    return sorted(path.relative_to(root).as_posix() for path in found)


def broken_links(root: Path, pages: list[str]) -> list[str]:
    """Every relative link in `pages` whose file does not exist under `root`, or whose anchor is
    not a heading of the Markdown page it points to, as 'page: target (why)'."""
    problems = []
    for page in pages:
        for target in docs_site.relative_links((root / page).read_text(encoding="utf-8")):
            path, anchor = docs_site.resolve(page, target)
            if path.startswith("..") or not (root / path).is_file():
                problems.append(f"{page}: {target} (no such file)")
            elif anchor and path.endswith(".md"):
                anchors = docs_site.heading_anchors((root / path).read_text(encoding="utf-8"))
                if anchor not in anchors:
                    problems.append(f"{page}: {target} (no heading with this anchor)")
    return problems


def test_the_link_check_finds_missing_files_and_anchors(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text(
        "# Tool\n\n## Flat in -> flat out, 5-cell texture\n\n"
        "[guide](docs/guide.md#using-demsr-predict) [card](CARD.md) [self](#tool)\n"
        "[texture](#flat-in---flat-out-5-cell-texture) [site](https://example.org/x.md)\n"
        "`[in code](nowhere.md)`\n\n```bash\necho '[fenced](nowhere.md)'\n```\n"
    )
    (tmp_path / "docs" / "guide.md").write_text(
        "# Using `demsr predict`\n\n[home](../README.md#tool) [up](../README.md#missing)\n"
        "![figure](images/missing.png) [outside](../../elsewhere.md)\n"
    )
    assert broken_links(tmp_path, markdown_pages(tmp_path)) == [
        "README.md: CARD.md (no such file)",
        "docs/guide.md: ../README.md#missing (no heading with this anchor)",
        "docs/guide.md: images/missing.png (no such file)",
        "docs/guide.md: ../../elsewhere.md (no such file)",
    ]


def test_every_relative_link_in_the_repository_resolves() -> None:
    pages = markdown_pages(REPO)
    assert {"README.md", "MODEL_CARD.md", "docs/architecture.md"} <= set(pages)
    links = sum(len(docs_site.relative_links((REPO / p).read_text())) for p in pages)
    assert links > 50, "the pages link to each other"
    assert broken_links(REPO, pages) == []


def test_the_readme_stays_short() -> None:
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines"


def test_the_site_builds_with_warnings_as_errors(tmp_path: Path) -> None:
    """`mkdocs build --strict`: a broken link or anchor, a page left out of the navigation or a
    navigation entry without a page fails the build; offline, on a fresh clone."""
    site = tmp_path / "site"
    command = [sys.executable, "-m", "mkdocs", "build", "--strict"]
    done = subprocess.run(
        [*command, "--config-file", str(REPO / "mkdocs.yml"), "--site-dir", str(site)],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    home = (site / "index.html").read_text(encoding="utf-8")
    assert "Results at a glance" in home and 'href="model-card.html#metrics"' in home
    for page in ["model-card", "benchmarks", "reliability", "architecture", "predict"]:
        assert (site / f"{page}.html").is_file(), page
    assert (site / "images" / "example_compare.png").stat().st_size > 10_000
