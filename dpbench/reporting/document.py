"""The report document: HTML and markdown built side by side from the same calls.

Every text that reaches either output is escaped here and nowhere else: labels, errors and paths in
result files are data, and a label such as ``<img src=x onerror=alert(1)>`` must read as text in
index.html and in report.md (markdown renders raw HTML, so report.md escapes it too).
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from typing import Sequence

from dpbench.reporting.tables import Table

CSS = """
body{font-family:-apple-system,BlinkMacSystemFont,"Segoe UI",Helvetica,Arial,sans-serif;margin:2em auto;
max-width:1280px;padding:0 1em;color:#222;line-height:1.45}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
nav a{margin-right:1em}
table{border-collapse:collapse;margin:.6em 0 1.4em;font-size:13px}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f4f4f4}
.scroll{overflow-x:auto}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:13px;color:#555}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(420px,1fr));gap:1em}
.gallery img{width:100%;image-rendering:pixelated}
.note{color:#555;font-size:13px}
.warning{background:#fff4e5;border-left:4px solid #e67e22;padding:.5em .8em}
.alert{background:#fdecea;border:2px solid #c0392b;padding:.8em 1em;font-weight:bold}
.verdict{background:#eef6ee;border-left:4px solid #2e7d32;padding:.6em .9em}
footer{margin-top:3em;border-top:2px solid #ccc;font-size:13px}
"""

PARAGRAPH_KINDS = {None, "note", "warning", "alert", "verdict"}
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]|#])")


def escape_markdown(text: str) -> str:
    """Plain text for markdown: HTML characters as entities, markdown syntax backslash-escaped."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", html.escape(str(text), quote=False)).replace("\n", " ")


@dataclass(frozen=True)
class Picture:
    """An image of the output folder: ``src`` is relative to it."""

    src: str
    alt: str
    caption: str
    links: tuple[tuple[str, str], ...] = ()  # (text, src) of related images, e.g. the other seeds' grids


class Document:
    def __init__(self, title: str) -> None:
        self.title = title
        self._html: list[str] = []
        self._markdown: list[str] = []
        self._banner: list[tuple[str, str]] = []
        self._toc: list[tuple[str, str]] = []

    def banner(self, text: str) -> None:
        """A warning shown above everything else."""
        self._banner.append((f'<p class="alert">{html.escape(text)}</p>', f"> **{escape_markdown(text)}**"))

    def section(self, anchor: str, title: str) -> None:
        self._toc.append((anchor, title))
        self._add(f'<h2 id="{html.escape(anchor)}">{html.escape(title)}</h2>', f"## {escape_markdown(title)}")

    def subsection(self, title: str) -> None:
        self._add(f"<h3>{html.escape(title)}</h3>", f"### {escape_markdown(title)}")

    def paragraph(self, text: str, kind: str | None = None) -> None:
        if kind not in PARAGRAPH_KINDS:
            raise ValueError(f"unknown paragraph kind {kind!r}")
        attribute = f' class="{kind}"' if kind else ""
        prefix = {"note": "*Note:* ", "warning": "**Warning:** ", "alert": "**Warning:** "}.get(kind, "")
        self._add(f"<p{attribute}>{html.escape(text)}</p>", prefix + escape_markdown(text))

    def table(self, table: Table) -> None:
        for warning in table.warnings:
            self.paragraph(warning, "warning")
        self._add(_html_table(table), markdown_table(table))

    def figure(self, picture: Picture) -> None:
        self._add(f'<figure><img src="{html.escape(picture.src)}" alt="{html.escape(picture.alt)}">'
                  f"<figcaption>{html.escape(picture.caption)}</figcaption></figure>",
                  f"![{escape_markdown(picture.alt)}]({picture.src})\n\n*{escape_markdown(picture.caption)}*")

    def gallery(self, pictures: Sequence[Picture]) -> None:
        """Images side by side, each at full column width, linked to the file at its own resolution."""
        items = "".join(f'<figure><a href="{html.escape(p.src)}"><img src="{html.escape(p.src)}" '
                        f'alt="{html.escape(p.alt)}"></a><figcaption>{html.escape(p.caption)}'
                        + "".join(f' · <a href="{html.escape(src)}">{html.escape(text)}</a>' for text, src in p.links)
                        + "</figcaption></figure>" for p in pictures)
        self._add(f'<div class="gallery">{items}</div>',
                  "\n\n".join(f"![{escape_markdown(p.alt)}]({p.src})\n*{escape_markdown(p.caption)}*"
                              + "".join(f" · [{escape_markdown(text)}]({src})" for text, src in p.links)
                              for p in pictures))

    def render_html(self, footer: Table) -> str:
        title = html.escape(self.title)
        nav = " ".join(f'<a href="#{html.escape(a)}">{html.escape(t)}</a>' for a, t in self._toc)
        return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
                "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
                f"<title>{title}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<h1>{title}</h1>\n"
                + "\n".join(h for h, _ in self._banner)
                + f'\n<nav>{nav} <a href="#provenance">Provenance</a></nav>\n' + "\n".join(self._html)
                + f'\n<footer id="provenance"><h2>Provenance</h2>{_html_table(footer)}'
                + "</footer>\n</body>\n</html>\n")

    def render_markdown(self, footer: Table) -> str:
        parts = [f"# {escape_markdown(self.title)}", *(m for _, m in self._banner), *self._markdown,
                 "## Provenance", markdown_table(footer)]
        return "\n\n".join(parts) + "\n"

    def _add(self, html_text: str, markdown_text: str) -> None:
        self._html.append(html_text)
        self._markdown.append(markdown_text)


def _html_table(table: Table) -> str:
    table_id = f' id="{html.escape(table.table_id)}"' if table.table_id else ""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in table.rows)
    return f'<div class="scroll"><table{table_id}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def markdown_table(table: Table) -> str:
    def row(cells: Sequence[str]) -> str:
        return "| " + " | ".join(escape_markdown(c) or " " for c in cells) + " |"

    return "\n".join([row(table.headers), "|" + "|".join("---" for _ in table.headers) + "|",
                      *(row(r) for r in table.rows)])
