"""A tiny document model (headings, paragraphs, lists, tables, figures) rendered to Markdown and to one
self-contained HTML file (figures embedded as base64 PNG), so both outputs come from the same content."""
from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path

from nin_bench.report.tables import markdown

CSS = """body{font-family:system-ui,sans-serif;max-width:70em;margin:2em auto;padding:0 1em;line-height:1.45;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:.9em}th,td{border:1px solid #ccc;padding:.3em .6em}
td{text-align:right}td:first-child{text-align:left}th{background:#f3f3f3}img{max-width:100%}
figure{margin:1.5em 0}figcaption{font-style:italic;font-size:.9em}code{background:#f3f3f3;padding:0 .2em}"""


@dataclass
class Doc:
    """Ordered blocks: ("h", level, text), ("p", text), ("ul", items), ("table", header, rows),
    ("fig", png_path, caption). Text may use **bold** and `code`."""

    title: str
    blocks: list[tuple] = field(default_factory=list)

    def h(self, level: int, text: str) -> None:
        """Add a heading."""
        self.blocks.append(("h", level, text))

    def p(self, text: str) -> None:
        """Add a paragraph."""
        self.blocks.append(("p", text))

    def ul(self, items: list[str]) -> None:
        """Add a bullet list."""
        self.blocks.append(("ul", items))

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        """Add a table of strings."""
        self.blocks.append(("table", header, rows))

    def fig(self, png: Path, caption: str) -> None:
        """Add a figure (PNG path) with its caption line."""
        self.blocks.append(("fig", Path(png), caption))


def to_markdown(doc: Doc, base: Path) -> str:
    """Render as GitHub Markdown; figure paths relative to `base` (the report's folder).

    Args:
        doc: the document.
        base: folder the Markdown file lives in.

    Returns:
        Markdown text.
    """
    out = [f"# {doc.title}"]
    for b in doc.blocks:
        kind = b[0]
        if kind == "h":
            out.append("#" * b[1] + " " + b[2])
        elif kind == "p":
            out.append(b[1])
        elif kind == "ul":
            out.append("\n".join(f"- {i}" for i in b[1]))
        elif kind == "table":
            out.append(markdown(b[1], b[2]))
        elif kind == "fig":
            rel = b[1].relative_to(base).as_posix()
            out.append(f"![{b[1].stem}]({rel})\n\n*{b[2]}*")
    return "\n\n".join(out) + "\n"


def _inline(text: str) -> str:
    """Escape HTML, then turn **bold** and `code` into tags."""
    t = html.escape(text)
    t = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", t)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", t)


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    """An HTML table of strings."""
    head = "".join(f"<th>{_inline(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def to_html(doc: Doc) -> str:
    """Render as one self-contained HTML page (PNG figures inlined as data URIs).

    Args:
        doc: the document.

    Returns:
        HTML text.
    """
    out = [f"<h1>{_inline(doc.title)}</h1>"]
    for b in doc.blocks:
        kind = b[0]
        if kind == "h":
            out.append(f"<h{b[1]}>{_inline(b[2])}</h{b[1]}>")
        elif kind == "p":
            out.append(f"<p>{_inline(b[1])}</p>")
        elif kind == "ul":
            out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in b[1]) + "</ul>")
        elif kind == "table":
            out.append(_html_table(b[1], b[2]))
        elif kind == "fig":
            data = base64.b64encode(b[1].read_bytes()).decode()
            out.append(f'<figure><img alt="{html.escape(b[1].stem)}" src="data:image/png;base64,{data}">'
                       f"<figcaption>{_inline(b[2])}</figcaption></figure>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(doc.title)}</title><style>{CSS}</style></head><body>\n"
            + "\n".join(out) + "\n</body></html>\n")
