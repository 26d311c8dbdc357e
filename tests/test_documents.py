"""Files into documents: every format, every problem, discovery's globs and links.

All files are made in ``tmp_path``, including a real PDF written by hand (a text object in
Helvetica), so the PDF reader is tested against bytes it did not write itself.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import ragline.documents as documents_module
from ragline.documents import Document, DocumentProblem, discover, load, load_all


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_bytes(content)
    return path


def one(path: Path, root: Path | None = None, **kwargs: int) -> Document | DocumentProblem:
    items = list(load(path, root=root, **kwargs))
    assert len(items) == 1, items
    return items[0]


def reason(path: Path, root: Path | None = None, **kwargs: int) -> str:
    item = one(path, root, **kwargs)
    assert isinstance(item, DocumentProblem), item
    return item.reason


def make_pdf(pages: list[list[str] | None]) -> bytes:
    """A minimal valid PDF: one page per entry, its lines in Helvetica (None: no text)."""
    page_ids = [4 + 2 * i for i in range(len(pages))]
    kids = " ".join(f"{p} 0 R" for p in page_ids)
    objects = {
        1: b"<< /Type /Catalog /Pages 2 0 R >>",
        2: f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>".encode(),
        3: b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    }
    for page_id, lines in zip(page_ids, pages, strict=True):
        shown = " T* ".join(f"({line}) Tj" for line in lines or [])
        content = f"BT /F1 12 Tf 14 TL 72 720 Td {shown} ET".encode() if lines else b""
        objects[page_id] = (
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            b"/Resources << /Font << /F1 3 0 R >> >> /Contents %d 0 R >>" % (page_id + 1)
        )
        objects[page_id + 1] = b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content)
    out = bytearray(b"%PDF-1.4\n")
    starts = {}
    for number in sorted(objects):
        starts[number] = len(out)
        out += b"%d 0 obj\n%s\nendobj\n" % (number, objects[number])
    xref, size = len(out), max(objects) + 1
    out += b"xref\n0 %d\n0000000000 65535 f \n" % size
    out += b"".join(b"%010d 00000 n \n" % starts[n] for n in range(1, size))
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (size, xref)
    return bytes(out)


# --- formats -----------------------------------------------------------------------------


def test_text_file_id_and_source_are_the_relative_path(tmp_path: Path) -> None:
    path = write(tmp_path / "notes" / "a.txt", "Hello\r\nworld\n")
    assert one(path, tmp_path) == Document("notes/a.txt", "Hello\r\nworld\n", "notes/a.txt", {})
    assert one(path) == Document("a.txt", "Hello\r\nworld\n", "a.txt", {})


def test_markdown_is_kept_as_is_with_its_title(tmp_path: Path) -> None:
    text = "```\n# not a title\n```\n\nIntro\n\n# The Title ##\n\n## Section\n\n- *item*\n"
    doc = one(write(tmp_path / "a.md", text))
    assert isinstance(doc, Document)
    assert doc.text == text
    assert doc.metadata == {"title": "The Title"}
    setext = one(write(tmp_path / "b.markdown", "Other Title\n===\n\nBody.\n"))
    assert isinstance(setext, Document)
    assert setext.metadata == {"title": "Other Title"}
    plain = one(write(tmp_path / "c.MD", "## Only a section\n\ntext\n"))
    assert isinstance(plain, Document)
    assert plain.metadata == {}


def test_html_gives_visible_text_with_paragraphs_and_title(tmp_path: Path) -> None:
    html = """<!doctype html><html><head><title> The  Page </title>
    <style>p { color: red }</style><script>var hidden = "no";</script>
    <meta charset="utf-8"></head>
    <body><h1>Heading</h1>
    <p>
      First   paragraph with <b>bold</b> and &amp; an entity.
    </p>
    <p>Second<br>line two</p><script>alert("no")</script>
    <ul><li>one</li><li>two</li></ul><pre>  keep   spaces</pre></body></html>"""
    doc = one(write(tmp_path / "page.html", html))
    assert isinstance(doc, Document)
    assert doc.metadata == {"title": "The Page"}
    assert doc.text == (
        "Heading\n\nFirst paragraph with bold and & an entity.\n\nSecond\nline two\n\n"
        "one\n\ntwo\n\n  keep   spaces"
    )


def test_html_with_an_unclosed_head_still_shows_its_body(tmp_path: Path) -> None:
    doc = one(write(tmp_path / "a.htm", "<html><head><title>T</title><body><p>Body text"))
    assert isinstance(doc, Document)
    assert (doc.text, doc.metadata) == ("Body text", {"title": "T"})


def test_html_without_visible_text_is_empty(tmp_path: Path) -> None:
    path = write(tmp_path / "a.html", "<html><head><title>T</title></head><body> </body></html>")
    assert reason(path) == "empty"


def test_pdf_text_of_every_page_joined_by_blank_lines(tmp_path: Path) -> None:
    path = write(tmp_path / "paper.pdf", make_pdf([["Hello PDF", "second line"], ["Page two"]]))
    doc = one(path)
    assert isinstance(doc, Document)
    first, second = doc.text.split("\n\n")
    assert "Hello PDF" in first
    assert "second line" in first
    assert second == "Page two"
    assert doc.metadata == {"pages": 2}
    assert (doc.id, doc.source) == ("paper.pdf", "paper.pdf")


def test_pdf_problems(tmp_path: Path) -> None:
    assert reason(write(tmp_path / "scan.pdf", make_pdf([None, None]))) == "PDF has no text layer"
    assert reason(write(tmp_path / "fake.pdf", "just text")) == "not a PDF"
    broken = reason(write(tmp_path / "broken.pdf", b"%PDF-1.4\n1 0 obj\n<< /Ty"))
    assert broken.startswith("unreadable PDF: ")


def test_jsonl_good_and_bad_lines(tmp_path: Path) -> None:
    lines = [
        '{"id": "a", "text": "Alpha", "metadata": {"lang": "en"}}',
        "",
        '{"id": 7, "text": "Seven"}',
        '{"id": "b", "text": "Beta" ',
        "[1, 2]",
        '{"text": "no id"}',
        '{"id": true, "text": "bool id"}',
        '{"id": "c"}',
        '{"id": "d", "text": 5}',
        '{"id": "e", "text": "  "}',
        '{"id": "f", "text": "x", "metadata": [1]}',
        '{"id": "g", "text": "Gamma", "metadata": null}',
        "   ",
    ]
    path = write(tmp_path / "sub" / "docs.jsonl", "\n".join(lines) + "\n")
    items = list(load(path, root=tmp_path))
    docs = [i for i in items if isinstance(i, Document)]
    problems = [
        (p.source, p.document_id, p.reason) for p in items if isinstance(p, DocumentProblem)
    ]
    assert docs == [
        Document("a", "Alpha", "sub/docs.jsonl:1", {"lang": "en"}),
        Document("7", "Seven", "sub/docs.jsonl:3", {}),
        Document("g", "Gamma", "sub/docs.jsonl:12", {}),
    ]
    assert problems[0][:2] == ("sub/docs.jsonl:4", None)
    assert problems[0][2].startswith("bad JSON on line 4: ")
    assert problems[1:] == [
        ("sub/docs.jsonl:5", None, "not a JSON object"),
        ("sub/docs.jsonl:6", None, "missing id"),
        ("sub/docs.jsonl:7", None, "id must be a string or an integer"),
        ("sub/docs.jsonl:8", "c", "missing text"),
        ("sub/docs.jsonl:9", "d", "text must be a string"),
        ("sub/docs.jsonl:10", "e", "empty"),
        ("sub/docs.jsonl:11", "f", "metadata must be an object"),
    ]


def test_jsonl_encoding_and_size_problems_stay_on_their_line(tmp_path: Path) -> None:
    data = (
        b'\xef\xbb\xbf{"id": "bom", "text": "after a BOM"}\r\n'
        b'{"id": "latin", "text": "caf\xe9"}\n'
        b'{"id": "long", "text": "' + b"x" * 200 + b'"}\n'
        b'{"id": "last", "text": "still read"}'
    )
    items = list(load(write(tmp_path / "a.jsonl", data), max_bytes=100))
    assert [i.id for i in items if isinstance(i, Document)] == ["bom", "last"]
    problems = [(p.source, p.reason) for p in items if isinstance(p, DocumentProblem)]
    assert problems == [
        ("a.jsonl:2", "not valid UTF-8 (bad byte at offset 28)"),
        ("a.jsonl:3", "line too large (> 100 B)"),
    ]


def test_jsonl_file_level_problems(tmp_path: Path) -> None:
    assert reason(write(tmp_path / "blank.jsonl", "\n  \n\n")) == "empty"
    assert reason(write(tmp_path / "nul.jsonl", b'{"id": 1}\x00\n')) == "binary file"


def test_binary_empty_and_whitespace_files(tmp_path: Path) -> None:
    assert reason(write(tmp_path / "a.txt", b"GIF89a\x00\x01\x02")) == "binary file"
    assert reason(write(tmp_path / "b.txt", b"")) == "empty"
    assert reason(write(tmp_path / "c.md", " \n\t\n")) == "empty"
    problem = one(write(tmp_path / "d.txt", ""), tmp_path)
    assert problem == DocumentProblem("d.txt", "d.txt", "empty")


def test_too_large_is_refused_before_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path / "big.txt", "x" * 3000)

    def no_open(*args: object, **kwargs: object) -> None:
        raise AssertionError("read a file that stat already showed too large")

    monkeypatch.setattr(documents_module, "open", no_open, raising=False)
    assert reason(path, max_bytes=1024) == "too large (2.93 KiB > 1 KiB)"
    monkeypatch.undo()
    assert isinstance(one(path, max_bytes=3000), Document)


def test_utf8_only_with_or_without_a_bom(tmp_path: Path) -> None:
    bom = one(write(tmp_path / "bom.txt", b"\xef\xbb\xbfCaf\xc3\xa9"))
    assert isinstance(bom, Document)
    assert bom.text == "Café"
    latin1 = write(tmp_path / "latin1.txt", "Café au lait".encode("latin-1"))
    assert reason(latin1) == "not valid UTF-8 (bad byte at offset 3)"
    utf16 = write(tmp_path / "utf16.md", "Hello".encode("utf-16"))
    assert reason(utf16) == "not valid UTF-8 (UTF-16/32 byte order mark)"


def test_unreadable_files_are_problems(tmp_path: Path) -> None:
    (tmp_path / "dir.txt").mkdir()
    assert reason(tmp_path / "dir.txt").startswith("unreadable: IsADirectoryError")
    assert reason(tmp_path / "missing.md").startswith("unreadable: FileNotFoundError")
    (tmp_path / "dir.jsonl").mkdir()
    assert reason(tmp_path / "dir.jsonl").startswith("unreadable: IsADirectoryError")


def test_permission_denied_is_a_problem_even_as_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Root reads a chmod 000 file anyway: refuse the open itself, as the kernel would.
    path = write(tmp_path / "secret.jsonl", '{"id": 1, "text": "t"}')

    def denied(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(documents_module, "open", denied, raising=False)
    assert reason(path) == "unreadable: PermissionError: Permission denied"
    assert reason(path.rename(tmp_path / "secret.md")) == (
        "unreadable: PermissionError: Permission denied"
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a chmod 000 file anyway")
def test_permission_denied_is_a_problem(tmp_path: Path) -> None:
    path = write(tmp_path / "secret.txt", "text")
    path.chmod(0)
    try:
        assert reason(path) == "unreadable: PermissionError: Permission denied"
    finally:
        path.chmod(0o600)


def test_unsupported_and_special_files(tmp_path: Path) -> None:
    assert reason(write(tmp_path / "a.docx", b"PK")) == "unsupported type .docx"
    assert reason(write(tmp_path / "Makefile", "all:")) == "unsupported type (no suffix)"
    os.mkfifo(tmp_path / "pipe.txt")
    assert reason(tmp_path / "pipe.txt") == "not a regular file"


def test_document_is_immutable() -> None:
    source = {"lang": "en"}
    doc = Document("a", "text", "a.txt", source)
    source["lang"] = "fr"
    assert doc.metadata == {"lang": "en"}
    with pytest.raises(TypeError):
        doc.metadata["lang"] = "de"  # type: ignore[index]
    with pytest.raises(AttributeError):
        doc.text = "other"  # type: ignore[misc]
    assert Document("b", "t", "b").metadata == {}
    assert hash(doc) == hash(Document("a", "text", "a.txt", {"other": 1}))


# --- discovery ---------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    for name in [
        "b.txt",
        "a.md",
        "page.html",
        "data.jsonl",
        "notes.tmp",
        "image.png",
        "docs/guide.md",
        "docs/drafts/wip.md",
        "docs/deep/er/x.txt",
        "drafts/top.md",
        ".hidden.txt",
        ".git/config.txt",
        "docs/.cache/c.md",
    ]:
        write(root / name, f"text of {name}\n" if not name.endswith(".jsonl") else "")
    return root


def relative(paths: Iterator[Path], root: Path) -> list[str]:
    return [p.relative_to(root).as_posix() for p in paths]


def test_walk_is_sorted_and_keeps_supported_visible_files(tree: Path) -> None:
    assert relative(discover([tree]), tree) == [
        "a.md",
        "b.txt",
        "data.jsonl",
        "docs/deep/er/x.txt",
        "docs/drafts/wip.md",
        "docs/guide.md",
        "drafts/top.md",
        "page.html",
    ]


def test_include_and_exclude_globs(tree: Path) -> None:
    found = discover([tree], exclude=["**/drafts/**", "*.jsonl"])
    assert relative(found, tree) == [
        "a.md",
        "b.txt",
        "docs/deep/er/x.txt",
        "docs/guide.md",
        "page.html",
    ]
    found = discover([tree], include=["*.tmp", "docs/*.md", "**/er/*.t?t"])
    assert relative(found, tree) == ["docs/deep/er/x.txt", "docs/guide.md", "notes.tmp"]
    found = discover([tree], include=["**/*.md", "[!a]*.txt"], exclude=["drafts/**"])
    # "**/" also matches no directory at all; a glob without "/" matches names at any depth.
    assert relative(found, tree) == [
        "a.md",
        "b.txt",
        "docs/deep/er/x.txt",
        "docs/drafts/wip.md",
        "docs/guide.md",
    ]


def test_hidden_names_are_kept_only_when_given(tree: Path) -> None:
    found = list(discover([tree / ".hidden.txt", tree / ".git"]))
    assert relative(iter(found), tree) == [".hidden.txt", ".git/config.txt"]


def test_given_files_come_first_as_given_and_only_once(tree: Path) -> None:
    found = relative(discover([tree / "image.png", tree / "b.txt", tree]), tree)
    assert found[:2] == ["image.png", "b.txt"]
    assert found.count("b.txt") == 1
    assert len(found) == 9


def test_symlinks_do_not_lead_out_of_the_root_or_loop(tree: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    write(outside / "secret.txt", "outside")
    (tree / "loop").symlink_to(tree, target_is_directory=True)
    (tree / "docs" / "up").symlink_to("..", target_is_directory=True)
    (tree / "out").symlink_to(outside, target_is_directory=True)
    (tree / "leak.txt").symlink_to(outside / "secret.txt")
    (tree / "alias.md").symlink_to(tree / "a.md")
    (tree / "self.txt").symlink_to(tree / "self.txt")
    found = relative(discover([tree]), tree)
    assert found == [
        "a.md",
        "b.txt",
        "data.jsonl",
        "docs/deep/er/x.txt",
        "docs/drafts/wip.md",
        "docs/guide.md",
        "drafts/top.md",
        "page.html",
        "self.txt",
    ]
    _, problems = load_all([tree])
    assert any(p.source == "self.txt" and "unreadable" in p.reason for p in problems)


def test_unlistable_directory_is_reported(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_scandir = os.scandir

    def scandir(path: Path) -> object:
        if Path(path).name == "docs":
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    documents, problems = load_all([tree])
    assert "docs/guide.md" not in [d.id for d in documents]
    assert (
        DocumentProblem("docs", None, "unreadable directory: PermissionError: Permission denied")
        in problems
    )


# --- load_all ----------------------------------------------------------------------------


def test_load_all_reports_duplicates_after_the_first(tmp_path: Path) -> None:
    write(tmp_path / "a.jsonl", '{"id": "x", "text": "first"}\n{"id": "y", "text": "y"}\n')
    write(tmp_path / "b.jsonl", '{"id": "x", "text": "again"}\n{"id": "y", "text": "y"}\n')
    write(tmp_path / "c.txt", "a text file")
    write(tmp_path / "d.jsonl", '{"id": "c.txt", "text": "clashes with a file id"}\n')
    write(tmp_path / "e.txt", b"\x00binary")
    documents, problems = load_all([tmp_path])
    assert [(d.id, d.source) for d in documents] == [
        ("x", "a.jsonl:1"),
        ("y", "a.jsonl:2"),
        ("c.txt", "c.txt"),
    ]
    assert documents[0].text == "first"
    assert problems == [
        DocumentProblem("b.jsonl:1", "x", "duplicate id 'x' (first in a.jsonl:1)"),
        DocumentProblem("b.jsonl:2", "y", "duplicate id 'y' (first in a.jsonl:2)"),
        DocumentProblem("d.jsonl:1", "c.txt", "duplicate id 'c.txt' (first in c.txt)"),
        DocumentProblem("e.txt", "e.txt", "binary file"),
    ]


def test_load_all_passes_filters_and_size_limit(tree: Path) -> None:
    write(tree / "big.md", "y" * 500)
    documents, problems = load_all([tree], exclude=["docs/**"], max_bytes=100)
    assert [d.id for d in documents] == ["a.md", "b.txt", "drafts/top.md", "page.html"]
    assert [(p.source, p.reason) for p in problems] == [
        ("big.md", "too large (500 B > 100 B)"),
        ("data.jsonl", "empty"),
    ]
