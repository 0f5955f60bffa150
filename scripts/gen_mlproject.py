"""Regenerate MLproject from the config schema, so `-P` names can never drift from RunConfig.

Every default is "" (not given): an explicit value would override a YAML `config` or a study
spec, and medvlm resolves the schema's defaults itself.

Usage: python scripts/gen_mlproject.py > MLproject   (tests/test_config.py checks it is current)
"""

from __future__ import annotations

from medvlm.config import entry_point_fields
from medvlm.report.config import ReportConfig
from medvlm.studies.spec import STUDY_FLAGS

STUDIES = ("ablation", "stability", "sweep")


def entry_point_params() -> dict[str, list[str]]:
    """Each entry point's parameters; which RunConfig fields apply is the fields' own metadata."""
    return {
        "zeroshot": ["config", *entry_point_fields("zeroshot")],
        "finetune": ["config", *entry_point_fields("finetune")],
        **{study: ["config", "spec", *STUDY_FLAGS, *entry_point_fields(study)] for study in STUDIES},
        "report": list(ReportConfig.model_fields),
    }


def render() -> str:
    lines = ["name: medvlm", "", "conda_env: conda.yaml", "", "entry_points:"]
    for name, params in entry_point_params().items():
        lines += [f"  {name}:", "    parameters:"]
        lines += [f'      {p}: {{type: string, default: ""}}' for p in params]
        args = " ".join(f"--{p} {{{p}}}" for p in params)
        lines += [f'    command: "python entrypoints/{name}.py {args}"', ""]
    return "\n".join(lines)


if __name__ == "__main__":
    print(render(), end="")
