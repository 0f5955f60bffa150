"""Writing a report: markdown (printed and logged), the same report as one self-contained HTML page
(figures embedded, so MLflow's artifact view shows it whole), one CSV per table, one file per figure."""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from medvlm.report.tables import Table
from medvlm.tracking.figures import DPI, save


@dataclass
class Section:
    title: str
    tables: list[Table] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)


@dataclass
class Report:
    title: str
    header: list[str]
    sections: list[Section]
    figures: dict[str, object]

    @property
    def tables(self) -> list[Table]:
        return [t for s in self.sections for t in s.tables]


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(frame: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(_cell(c) for c in frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def _has_heading(section: Section, table: Table) -> bool:
    return len(section.tables) > 1 or table.title != section.title


def _csv_line(table: Table) -> str:
    note = f". {table.note[:1].upper()}{table.note[1:]}." if table.note else ""
    return f"CSV: `tables/{table.name}.csv`{note}"


def to_markdown(report: Report) -> str:
    parts = [f"# {report.title}", "\n".join(report.header)]
    for section in report.sections:
        parts.append(f"## {section.title}")
        for table in section.tables:
            parts.append(f"### {table.title}" if _has_heading(section, table) else "")
            parts.append(table.text or (markdown_table(table.view) if len(table.view) and len(table.view.columns)
                                        else "_No rows to show here._"))  # an empty table is broken markdown
            parts.append(_csv_line(table))
        parts += [f"![{Path(path).stem}]({path})" for path in section.figures]
        parts.append("\n".join(section.lines))
    return "\n\n".join(p for p in parts if p) + "\n"


STYLE = ("body{font-family:system-ui,sans-serif;max-width:80em;margin:auto;padding:1em;line-height:1.4}"
         "table{border-collapse:collapse;font-size:.85em;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 6px}"
         "th{background:#f3f3f3}img,svg{max-width:100%;height:auto;display:block;margin:1em 0}code{background:#f3f3f3}")


def _inline(text: str) -> str:
    """Escaped text with the markdown the report writes inline: `code`, **bold** and _italics_."""
    text = html.escape(text, quote=False)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    text = re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", text)
    return re.sub(r"(?<!\w)_([^_]+)_(?!\w)", r"<i>\1</i>", text)


def _prose(text: str) -> str:
    """Paragraphs and "- " bullet lists, the only block markdown of the report's prose."""
    parts = []
    for block in re.split(r"\n\s*\n", text.strip()):
        lines = [line for line in block.splitlines() if line.strip()]
        items = [line[2:] for line in lines if line.startswith("- ")]
        if items and len(items) == len(lines):
            parts.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in items) + "</ul>")
        elif lines:
            parts.append("<p>" + "<br>".join(_inline(line) for line in lines) + "</p>")
    return "\n".join(parts)


def _html_table(frame: pd.DataFrame) -> str:
    """An HTML table whose cells keep the markdown marks of the markdown table (best in bold, second in italics)."""
    head = "".join(f"<th>{_inline(str(c))}</th>" for c in frame.columns)
    rows = "".join("<tr>" + "".join(f"<td>{_inline(str(v))}</td>" for v in row) + "</tr>"
                   for row in frame.itertuples(index=False))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def embedded(folder: Path, path: str) -> str:
    """The figure written at `folder/path`: an SVG inline, a PNG as a base64 data URI shown at its size in inches
    (at 96 CSS px an inch, as a browser shows the SVG), not at its 200-dpi pixel count."""
    data = (folder / path).read_bytes()
    if path.endswith(".svg"):
        return data.decode()[data.decode().index("<svg"):]
    width = round(int.from_bytes(data[16:20], "big") * 96 / DPI)  # the PNG header's IHDR width
    return (f'<img alt="{html.escape(Path(path).stem)}" width="{width}" '
            f'src="data:image/png;base64,{base64.b64encode(data).decode()}">')


def to_html(report: Report, folder: Path) -> str:
    """One page, nothing linked: tables as HTML tables, figures embedded from `folder`."""
    body = [f"<h1>{_inline(report.title)}</h1>", _prose("\n".join(report.header))]
    for section in report.sections:
        body.append(f"<h2>{_inline(section.title)}</h2>")
        for table in section.tables:
            if _has_heading(section, table):
                body.append(f"<h3>{_inline(table.title)}</h3>")
            if table.text:
                body.append(_prose(table.text))
            elif len(table.view) and len(table.view.columns):
                body.append(_html_table(table.view))
            else:
                body.append("<p><i>No rows to show here.</i></p>")
            body.append(f"<p>{_inline(_csv_line(table))}</p>")
        body += [f"<figure>{embedded(folder, path)}<figcaption>{html.escape(path)}</figcaption></figure>"
                 for path in section.figures]
        body.append(_prose("\n".join(section.lines)))
    return (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(report.title)}</title>'
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(part for part in body if part) + "\n</body></html>\n")


def write(report: Report, folder: Path) -> str:
    """report.md, report.html, tables/*.csv and the figures (plots/*.png or .svg) under `folder`; returns the markdown."""
    (folder / "tables").mkdir(parents=True, exist_ok=True)
    for table in report.tables:
        table.data.to_csv(folder / "tables" / f"{table.name}.csv", index=False)
    for path, fig in report.figures.items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        save(fig, folder / path)
    markdown = to_markdown(report)
    (folder / "report.md").write_text(markdown)
    (folder / "report.html").write_text(to_html(report, folder))
    return markdown
