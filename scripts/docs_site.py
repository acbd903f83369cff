"""The documentation site is the repository's own Markdown, read as it is written.

Pages link to each other and to repository files by paths relative to where they live in the
repository (what GitHub and a checkout show). MkDocs (`mkdocs.yml` names this file under
`hooks`) builds from `docs/` only, so these hooks:

- add the root pages (README.md as the home page, MODEL_CARD.md, BENCHMARKS.md, RELIABILITY.md)
  to the site, and every other repository file a page links to (benchmark records, configs,
  scripts, the notebook), at its repository path;
- rewrite each relative link from its repository path to the target's place in the site;
- give headings GitHub's anchors, so `page.md#a-heading` works in both places.

`tests/test_docs.py` checks the same links on the repository with the same functions.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DOCS_DIR = "docs"
ROOT_PAGES = {
    "README.md": "index.md",
    "MODEL_CARD.md": "model-card.md",
    "BENCHMARKS.md": "benchmarks.md",
    "RELIABILITY.md": "reliability.md",
}

# A fenced code block, an inline code span, or an inline link / image target `](target)`.
_FENCE = r"^```.*?^```[^\n]*$"
_TOKEN = re.compile(_FENCE + r"|`[^`\n]*`|(?P<open>\]\()(?P<target>[^)\s]+)", re.M | re.S)
# A fenced code block, or an ATX heading (`## Text`, optionally closed by hashes).
_HEADING = re.compile(_FENCE + r"|^(?P<hashes>#{1,6})[ \t]+(?P<text>[^\n]+?)[ \t#]*$", re.M | re.S)


def github_slug(text: str, separator: str = "-") -> str:
    """The anchor GitHub gives a heading: lower case, markup and punctuation dropped, spaces to
    hyphens (so `Flat in -> flat out` becomes `flat-in---flat-out`)."""
    text = re.sub(r"<[^>]+>", "", text)
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "", text)
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", separator)


def heading_anchors(markdown: str) -> set[str]:
    """The anchors of a Markdown page's headings (outside code blocks), as GitHub makes them;
    a repeated heading gets `-1`, `-2`, ..."""
    anchors: set[str] = set()
    for match in _HEADING.finditer(markdown):
        if match.group("hashes") is None:
            continue
        slug = base = github_slug(match.group("text"))
        count = 0
        while slug in anchors:
            count += 1
            slug = f"{base}-{count}"
        anchors.add(slug)
    return anchors


def relative_links(markdown: str) -> list[str]:
    """Targets of the inline links and images of a page that point into the repository
    (no scheme, not absolute), outside code; `#anchor` alone is a link into the page itself."""
    targets = (match.group("target") for match in _TOKEN.finditer(markdown))
    return [target for target in targets if _is_relative(target)]


def _is_relative(target: str | None) -> bool:
    return not (target is None or re.match(r"[a-zA-Z][\w+.-]*:", target) or target[0] == "/")


def resolve(page: str, target: str) -> tuple[str, str]:
    """(repository path, anchor) of a relative link `target` written in the repository file
    `page` (both POSIX paths from the repository root). The path is `page` itself for `#anchor`
    links; it may point outside the repository (starting with `..`)."""
    path, _, anchor = target.partition("#")
    if not path:
        return page, anchor
    joined = PurePosixPath(page).parent / path
    parts: list[str] = []
    for part in joined.parts:
        if part == "..":
            if parts and parts[-1] != "..":
                parts.pop()
            else:
                parts.append(part)
        elif part != ".":
            parts.append(part)
    return "/".join(parts), anchor


def site_path(repo_path: str) -> str:
    """Where a repository file lives in the site (relative to its root)."""
    if repo_path in ROOT_PAGES:
        return ROOT_PAGES[repo_path]
    if repo_path.startswith(DOCS_DIR + "/"):
        return repo_path[len(DOCS_DIR) + 1 :]
    return repo_path


def _relative_to(target: str, start: str) -> str:
    """`target` as a link from the site page `start` (both site paths)."""
    start_dir = PurePosixPath(start).parent.parts
    target_parts = PurePosixPath(target).parts
    common = 0
    while (
        common < min(len(start_dir), len(target_parts) - 1)
        and start_dir[common] == target_parts[common]
    ):
        common += 1
    return "/".join([".."] * (len(start_dir) - common) + list(target_parts[common:]))


# The repository path of each site page that does not come from docs/.
_ORIGIN: dict[str, str] = {}


def _repo_path(src_uri: str) -> str:
    return _ORIGIN.get(src_uri, f"{DOCS_DIR}/{src_uri}")


def on_config(config: Any) -> Any:
    config.mdx_configs.setdefault("toc", {})["slugify"] = github_slug
    return config


def on_files(files: Any, config: Any) -> Any:
    from mkdocs.structure.files import File

    _ORIGIN.clear()

    def add(repo_path: str) -> None:
        _ORIGIN[site_path(repo_path)] = repo_path
        files.append(
            File.generated(config, site_path(repo_path), abs_src_path=str(REPO / repo_path))
        )

    for repo_path in ROOT_PAGES:
        add(repo_path)
    queue = [file.src_uri for file in files.documentation_pages()]
    while queue:
        page = _repo_path(queue.pop())
        for target in relative_links((REPO / page).read_text(encoding="utf-8")):
            repo_path, _ = resolve(page, target)
            is_file = (REPO / repo_path).is_file() and not repo_path.startswith("..")
            if is_file and files.get_file_from_path(site_path(repo_path)) is None:
                add(repo_path)
                if repo_path.endswith(".md"):
                    queue.append(site_path(repo_path))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    source = _repo_path(page.file.src_uri)

    def rewrite(match: re.Match[str]) -> str:
        target = match.group("target")
        if not _is_relative(target):
            return match.group(0)
        repo_path, anchor = resolve(source, target)
        if repo_path == source:
            return match.group(0)
        link = _relative_to(site_path(repo_path), page.file.src_uri)
        return match.group("open") + link + (f"#{anchor}" if anchor else "")

    return _TOKEN.sub(rewrite, markdown)
