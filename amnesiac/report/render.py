"""Markdown and self-contained HTML (plots embedded as base64 PNG) from a list of sections."""
from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

from ..io import atomic_write_text


@dataclass
class Section:
    title: str
    text: str = ""
    table: list[list[str]] | None = None  # first row = header
    images: list[tuple[str, bytes]] = field(default_factory=list)  # (caption, png bytes)


def _md_table(rows: list[list[str]]) -> str:
    head, *body = rows
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(out)


def write_report(out_dir: str | Path, title: str, sections: list[Section], stem: str = "report") -> dict[str, Path]:
    """Writes <stem>.md (+ PNGs in <stem>_img/) and <stem>.html (PNGs inlined; one file to share)."""
    out = Path(out_dir)
    img_dir = out / f"{stem}_img"
    img_dir.mkdir(parents=True, exist_ok=True)
    md = [f"# {title}", ""]
    h = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
         "<style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
         "table{border-collapse:collapse;margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}"
         "th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%;margin:.5em 0}"
         ".FAIL{color:#b03a2e;font-weight:bold}.PASS{color:#1e8449;font-weight:bold}figcaption{font-size:12px;color:#555}"
         "pre{white-space:pre-wrap}</style></head><body>", f"<h1>{html.escape(title)}</h1>"]
    n = 0
    for s in sections:
        md += [f"## {s.title}", ""]
        h.append(f"<h2>{html.escape(s.title)}</h2>")
        if s.text:
            md += [s.text, ""]
            txt = html.escape(s.text).replace("**FAIL**", "<span class='FAIL'>FAIL</span>").replace(
                "**PASS**", "<span class='PASS'>PASS</span>")
            h += [f"<p>{p}</p>" for p in txt.split("\n\n")]
        if s.table:
            md += [_md_table(s.table), ""]
            head, *body = s.table
            h.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head) + "</tr>")
            h += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in body]
            h.append("</table>")
        for cap, png in s.images:
            n += 1
            name = f"fig{n}.png"
            (img_dir / name).write_bytes(png)
            md += [f"![{cap}]({img_dir.name}/{name})", ""]
            b64 = base64.b64encode(png).decode()
            h.append(f"<figure><img alt='{html.escape(cap)}' src='data:image/png;base64,{b64}'>"
                     f"<figcaption>{html.escape(cap)}</figcaption></figure>")
    h.append("</body></html>")
    paths = {"md": out / f"{stem}.md", "html": out / f"{stem}.html"}
    atomic_write_text(paths["md"], "\n".join(md) + "\n")
    atomic_write_text(paths["html"], "\n".join(h) + "\n")
    return paths


def console():
    """The CLI's rich console. Written to a file or pipe (a log, CI), rich would wrap every table cell at its
    80-column default; there the console is wide unless $COLUMNS says otherwise."""
    import os

    from rich.console import Console

    c = Console()
    return c if c.is_terminal or "COLUMNS" in os.environ else Console(width=200)
