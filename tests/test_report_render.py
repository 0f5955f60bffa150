"""Report markdown: a table with no rows is never written as a (broken) markdown table."""

from __future__ import annotations

import pandas as pd

from medvlm.report.render import Report, Section, to_markdown
from medvlm.report.tables import Table


def test_an_empty_table_is_a_sentence_not_broken_markdown():
    empty = Table("comparisons", "Paired comparisons", pd.DataFrame([]), pd.DataFrame([{"a": 1}]), "the CSV lists every pair")
    headers_only = Table("other", "Other", pd.DataFrame(columns=["model", "AUC"]), pd.DataFrame())
    markdown = to_markdown(Report("r", ["header"], [Section("Paired comparisons", [empty, headers_only])], {}))
    assert not [line for line in markdown.splitlines() if line.startswith("|")]
    assert markdown.count("_No rows to show here._") == 2
    assert "CSV: `tables/comparisons.csv`. The CSV lists every pair." in markdown
