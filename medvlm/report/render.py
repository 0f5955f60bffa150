"""Writing a report: markdown (printed and logged), one CSV per table, one PNG per figure."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from medvlm.report.tables import Table
from medvlm.tracking.plots import close


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


def to_markdown(report: Report) -> str:
    parts = [f"# {report.title}", "\n".join(report.header)]
    for section in report.sections:
        parts.append(f"## {section.title}")
        for table in section.tables:
            parts.append(f"### {table.title}" if len(section.tables) > 1 or table.title != section.title else "")
            parts.append(table.text or (markdown_table(table.view) if len(table.view) and len(table.view.columns)
                                        else "_No rows to show here._"))  # an empty table is broken markdown
            note = f". {table.note[:1].upper()}{table.note[1:]}." if table.note else ""
            parts.append(f"CSV: `tables/{table.name}.csv`{note}")
        parts += [f"![{Path(path).stem}]({path})" for path in section.figures]
        parts.append("\n".join(section.lines))
    return "\n\n".join(p for p in parts if p) + "\n"


def write(report: Report, folder: Path) -> str:
    """report.md, tables/*.csv and plots/*.png under `folder`; returns the markdown."""
    (folder / "tables").mkdir(parents=True, exist_ok=True)
    for table in report.tables:
        table.data.to_csv(folder / "tables" / f"{table.name}.csv", index=False)
    for path, fig in report.figures.items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(folder / path, dpi=120)
        close(fig)
    markdown = to_markdown(report)
    (folder / "report.md").write_text(markdown)
    return markdown
