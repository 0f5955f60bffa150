""""Which one shall we choose?" per task and test set, with the evidence for it.

The best model + strategy (headline metric, full training data) is compared with the runner-up
by the paired bootstrap. Where the difference's interval contains 0 the two are reported as not
significantly different, and every other choice the best does not significantly beat is listed
with it: the data do not single out a winner among them. The best medical and the best general
choice are compared the same way, which is the question medvlm exists to answer.
"""

from __future__ import annotations

import pandas as pd

from medvlm.metrics.bootstrap import Difference
from medvlm.report.cells import Cell, Uncertainty
from medvlm.report.tables import PRIMARY, TASK_NAMES, Grid, Table, difference_text, metric_name


def choice(cell: Cell, metric: str, unc: Uncertainty) -> str:
    interval = unc.interval(cell, metric)
    value = f"{cell.value(metric):.3f}" + ("" if interval is None else f" [{interval[0]:.3f}, {interval[1]:.3f}]")
    return f"{cell.label} · {cell.strategy} ({value})"


def verdict(diff: Difference | str) -> str:
    if isinstance(diff, str):
        return "untested (no paired per-sample data)"
    if not diff.significant:
        return "not significantly different"
    return "significantly better" if diff.estimate > 0 else "significantly worse"


def recommendations(grid: Grid, unc: Uncertainty) -> Table | None:
    lines, rows = [], []
    for task in grid.tasks():
        metric = PRIMARY[task]
        for testset in grid.testsets(task):
            ranked = sorted((c for c in grid.all if (c.task, c.testset, c.train_fraction) == (task, testset, 1.0)
                             and c.value(metric) is not None), key=lambda c: -c.value(metric))
            if not ranked:
                continue
            best = ranked[0]
            head = f"- **{testset}** ({TASK_NAMES[task]}, {metric_name(metric)}): best **{choice(best, metric, unc)}**"
            row = {"task": task, "testset": testset, "metric": metric, "best_model": best.label,
                   "best_strategy": best.strategy, "best_value": best.value(metric)}
            if len(ranked) == 1:
                lines.append(head + "; the only model + strategy with a run, so nothing to compare.")
                rows.append(row)
                continue
            runner = ranked[1]
            diff = unc.compare(best, runner, metric)
            said = verdict(diff)
            text = (f"{head}; runner-up {choice(runner, metric, unc)}: best − runner-up {difference_text(diff)} → "
                    f"**{said}**.")
            tied = [c for c in ranked[1:] if isinstance(d := unc.compare(best, c, metric), Difference) and not d.significant]
            if tied:
                text += " Not significantly worse than the best: " + ", ".join(f"{c.label} · {c.strategy}" for c in tied) + "."
            medical = next((c for c in ranked if c.domain == "medical"), None)
            general = next((c for c in ranked if c.domain == "general"), None)
            gap = unc.compare(medical, general, metric) if medical and general else None
            if gap is not None:
                text += (f" Best medical ({medical.label} · {medical.strategy}) − best general ({general.label} · "
                         f"{general.strategy}): {difference_text(gap)} → {verdict(gap)}.")
            lines.append(text)
            rows.append({**row, "runner_up_model": runner.label, "runner_up_strategy": runner.strategy,
                         "runner_up_value": runner.value(metric), "verdict": said,
                         **_numbers("difference", diff), "tied_with_best": "; ".join(f"{c.label} · {c.strategy}" for c in tied),
                         **({"best_medical": f"{medical.label} · {medical.strategy}",
                             "best_general": f"{general.label} · {general.strategy}", **_numbers("medical_minus_general", gap)}
                            if gap is not None else {})})
    if not rows:
        return None
    return Table("recommendations", "Recommendation", pd.DataFrame(rows), pd.DataFrame(rows), text="\n".join(lines),
                 note="best − runner-up is a paired bootstrap difference on the same test samples; "
                      "\"not significantly different\" means its interval contains 0")


def _numbers(prefix: str, diff: Difference | str) -> dict:
    if isinstance(diff, str):
        return {f"{prefix}_note": diff}
    return {prefix: diff.estimate, f"{prefix}_ci_low": diff.low, f"{prefix}_ci_high": diff.high,
            f"{prefix}_p_value": diff.p}
