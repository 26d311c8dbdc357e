"""Markdown and HTML as prose for a small model, and passage titles."""

from __future__ import annotations

from ragline.prose import plain, title

MARKDOWN = """---
title: Jobs
tags: [ingest]
---
<!-- an editor's note -->
## Stopping a **job**

Send `DELETE /api/v1/ingest/{id}`; see [the guide](docs/GUIDE.md) and <https://example.org>.
![a diagram](img/jobs.png)

| route | what |
|:---|---:|
| `POST /api/v1/ingest` | starts a job |
| `DELETE /api/v1/ingest/{id}` | stops at the next batch boundary |

```sh
ragline ingest docs/
ragline ingest more/
three
four
five
```

> A *quoted* line.

***

[guide]: https://example.org/guide
"""


def test_markdown_becomes_prose() -> None:
    text = plain(MARKDOWN)
    assert text.startswith("Stopping a job:")
    assert "title: Jobs" not in text
    assert "editor's note" not in text
    assert "Send DELETE /api/v1/ingest/{id}; see the guide and https://example.org." in text
    assert "a diagram" in text
    assert "img/jobs.png" not in text
    assert "route: POST /api/v1/ingest; what: starts a job." in text
    assert "route: DELETE /api/v1/ingest/{id}; what: stops at the next batch boundary." in text
    assert "---" not in text
    assert "ragline ingest docs/" in text
    assert "five" not in text, "a long code block keeps only its first lines"
    assert "```" not in text
    assert "A quoted line." in text
    assert "***" not in text
    assert "https://example.org/guide" not in text


def test_html_loses_its_tags() -> None:
    assert plain("<p>Fish &amp; <b>chips</b></p>") == "Fish & chips"


def test_plain_text_is_unchanged() -> None:
    text = "Herons stand still in shallow water.\n\nThey eat fish."
    assert plain(text) == text


def test_a_title_is_the_file_name_and_the_first_heading() -> None:
    assert title("intro\n## Stopping a **job**\nmore", "/srv/docs/GUIDE.md") == (
        "GUIDE.md: Stopping a job"
    )
    assert title("no heading here", "notes.txt") == "notes.txt"
