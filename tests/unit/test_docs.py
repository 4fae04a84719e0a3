"""The README and the pages of docs/: their relative links and images resolve, and every
console script they show answers ``--help``.

Links are checked as GitHub and the docs site read them: a path relative to the page
that exists in the repository (pages of docs/ may only point inside docs/, which is all
the site holds), and an anchor that names a heading of the target page under both
GitHub's and the site's rules for heading ids. ``make docs`` checks the site's own view
again with warnings as errors.
"""

import importlib.metadata as md
import re
import sys
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
SCRIPTS = dict(re.findall(r'"(cald-[a-z]+)=([\w.]+:main)"', (ROOT / "setup.py").read_text()))

_FENCE = re.compile(r"^( {0,3})(```|~~~)[^\n]*\n.*?^\1\2[ \t]*$", re.M | re.S)
_CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.S)
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HTML_LINK = re.compile(r"<(?:a|img)\s[^>]*?(?:href|src)=\"([^\"]+)\"", re.I)
_REF_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:[ \t]*<?([^\s>]+)>?"
                      r"(?:[ \t]+(?:\"[^\"]*\"|'[^']*'|\([^)]*\)))?[ \t]*$", re.M)
_HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$", re.M)
_SETEXT = re.compile(r"^([^\n#>|`-][^\n]*)\n(=+|-+)[ \t]*$", re.M)
_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)


def _text(page):
    return page.read_text(encoding="utf-8")


def _prose(text):
    """The text outside fenced code blocks and code spans."""
    return _CODE_SPAN.sub("", _FENCE.sub("", text))


def _code(text):
    """The contents of fenced code blocks and code spans."""
    blocks = [m.group(0) for m in _FENCE.finditer(text)]
    spans = [m.group(2) for m in _CODE_SPAN.finditer(_FENCE.sub("", text))]
    return blocks + spans


def links(page):
    """``(target, line)`` of every link and image of a page: Markdown and HTML."""
    prose = _prose(_text(page))
    found = []
    for pattern in (_LINK, _HTML_LINK, _REF_DEF):
        for m in pattern.finditer(prose):
            found.append((m.group(1), prose.count("\n", 0, m.start()) + 1))
    return found


def _heading_text(raw):
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", raw)  # links keep their text
    text = re.sub(r"<[^>]+>", "", text)
    return text.replace("`", "").replace("*", "")


def github_slug(text):
    """GitHub's heading id: lower case, punctuation dropped, each space a hyphen."""
    return re.sub(r"[^\w\- ]", "", _heading_text(text).strip().lower()).replace(" ", "-")


def site_slug(text):
    """Python-Markdown's (the docs site's) heading id: ASCII, runs of spaces and hyphens
    one hyphen."""
    value = unicodedata.normalize("NFKD", _heading_text(text))
    value = value.encode("ascii", "ignore").decode("ascii")
    value = re.sub(r"[^\w\s-]", "", value).strip().lower()
    return re.sub(r"[-\s]+", "-", value)


def anchors(page):
    """The heading ids a page has under both rules (with GitHub's numbered repeats)."""
    text = _FENCE.sub("", _text(page))
    titles = [m.group(2) for m in _HEADING.finditer(text)]
    titles += [m.group(1) for m in _SETEXT.finditer(text) if m.group(1).strip()]
    seen, gh = {}, set()
    for t in titles:
        slug = github_slug(t)
        n = seen.get(slug, 0)
        gh.add(slug if n == 0 else f"{slug}-{n}")
        seen[slug] = n + 1
    site = {site_slug(t) for t in titles}
    return gh, site


def _relative(page):
    return str(page.relative_to(ROOT))


def test_pages_are_found():
    names = {_relative(p) for p in PAGES}
    assert {"README.md", "docs/index.md", "docs/hub_checkpoints.md"} <= names


@pytest.mark.parametrize("page", PAGES, ids=_relative)
def test_relative_links_and_images_resolve(page):
    problems = []
    for target, line in links(page):
        if _SCHEME.match(target):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        where = f"{_relative(page)}:{line}: {target}"
        if not dest.exists():
            problems.append(f"{where}: {path} does not exist")
            continue
        if ROOT not in dest.parents and dest != ROOT:
            problems.append(f"{where}: points outside the repository")
            continue
        if DOCS in page.parents and DOCS not in dest.parents:
            problems.append(f"{where}: the docs site holds only docs/; link inside it")
            continue
        if anchor and dest.suffix == ".md":
            gh, site = anchors(dest)
            if anchor not in gh or anchor not in site:
                problems.append(f"{where}: no heading with the id '{anchor}' in "
                                f"{_relative(dest)} (GitHub: {anchor in gh}, site: "
                                f"{anchor in site})")
    assert not problems, "\n".join(problems)


def test_link_finder_sees_every_kind():
    """The checker finds links and images, and none inside code."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        page = Path(d) / "p.md"
        page.write_text('[a](x.md) ![b](img/y.png "t") <img src="z.png">\n'
                        "`[c](code.md)`\n```\n[d](fenced.md)\n```\n[e]: ref.md\n"
                        "[-9, -1]: not a ref.\n")
        assert [t for t, _ in links(page)] == ["x.md", "img/y.png", "z.png", "ref.md"]
    assert github_slug("Layer distillation: GenDistiller vs `DistilHuBERT`") == \
        site_slug("Layer distillation: GenDistiller vs `DistilHuBERT`") == \
        "layer-distillation-gendistiller-vs-distilhubert"
    assert github_slug("a — b") == "a--b" and site_slug("a — b") == "a-b"


def _help_text(argv, main, capsys):
    """``(exit status, stdout)`` of ``main(argv)``, whether it returns or exits."""
    try:
        status = main(argv)
    except SystemExit as exc:
        status = exc.code
    return (0 if status is None else status), capsys.readouterr().out


def _entry_points():
    eps = md.entry_points(group="console_scripts")
    return {ep.name: ep for ep in eps if ep.name in SCRIPTS}


def shown_commands():
    """``{script: {subcommand or None, ...}}`` for every console script the README and the
    pages show in code, with the word that follows it (a subcommand candidate)."""
    pattern = re.compile(r"(?<![\w./-])(" + "|".join(map(re.escape, SCRIPTS)) +
                         r")(?![\w-])(?:[ \t]+([a-z][a-z0-9_-]*)(?![\w./]))?")
    shown = {}
    for page in PAGES:
        if DOCS / "api" in page.parents:
            continue
        for code in _code(_text(page)):
            for m in pattern.finditer(code):
                shown.setdefault(m.group(1), set()).add(m.group(2))
    return shown


SHOWN = shown_commands()


def test_the_docs_show_every_console_script():
    assert set(SHOWN) == set(SCRIPTS), "console scripts the README and docs/ never show: " \
        f"{sorted(set(SCRIPTS) - set(SHOWN))}"


@pytest.mark.parametrize("script", sorted(SHOWN))
def test_shown_console_scripts_answer_help(script, capsys):
    """The installed entry point of each script shown, and each of its subcommands that
    the docs show, answers ``--help`` with exit status 0."""
    assert (Path(sys.executable).parent / script).is_file(), \
        f"{script} is not installed beside {sys.executable}: pip install -e ."
    eps = _entry_points()
    assert script in eps, f"{script} has no installed entry point: pip install -e ."
    main = eps[script].load()
    status, out = _help_text(["--help"], main, capsys)
    assert status == 0 and "usage:" in out, (script, status, out)
    choices = re.search(r"\{([\w,-]+)\}", out)
    commands = set(choices.group(1).split(",")) if choices else set()
    words = {w for w in SHOWN[script] if w}
    if commands:
        unknown = words - commands
        assert not unknown, f"the docs show {script} {sorted(unknown)}; it has {sorted(commands)}"
        for word in sorted(words):
            status, out = _help_text([word, "--help"], main, capsys)
            assert status == 0 and "usage:" in out, (f"{script} {word} --help", status, out)
