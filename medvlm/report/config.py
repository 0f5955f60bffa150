"""The report's parameters: one pydantic schema for `medvlm report` flags and MLproject `-P` values.

Values arrive as strings ("" = not given, as MLproject defaults are); errors are RunConfig's one line.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from medvlm.config import FIGURE_FORMAT_HELP, CommaList, FigureFormat, split_commas, validated


class ReportConfig(BaseModel):
    """Which runs a report reads, and how it puts uncertainty on them."""

    model_config = ConfigDict(extra="forbid")

    experiment: CommaList[str] = Field(default_factory=list, description="MLflow experiment name(s) to read, comma-separated; "
                                  "the report run is logged in the first; empty: the runs' default experiment")
    study: CommaList[str] = Field(default_factory=list, description="only runs of these studies (medvlm.study tag), comma-separated")
    spec: str = Field("", description="a study spec (sweeps/*.yaml): only runs of the study it defines")
    parent_run: CommaList[str] = Field(default_factory=list, description="only child runs of these study parent run ids, comma-separated")
    tags: dict[str, str] = Field(default_factory=dict, description="only runs with these tag values: key=value,key=value (e.g. medvlm.dataset=breastmnist)")
    filter: str = Field("", description="extra MLflow search filter, e.g. \"params.size = '28'\"")
    resamples: int = Field(1000, ge=100, description="bootstrap resamples per metric (1000+ for reported intervals)")
    confidence: float = Field(0.95, gt=0.5, lt=1, description="confidence level of the percentile intervals")
    seed: int = Field(0, description="bootstrap seed (same seed, same intervals)")
    workers: int = Field(0, ge=0, description="processes for the bootstrap (0 = one per CPU)")
    output: str = Field("", description="also write the report (markdown, HTML, CSV, figures) into this folder")
    figure_format: FigureFormat = Field("png", description=FIGURE_FORMAT_HELP)

    @field_validator("tags", mode="before")
    @classmethod
    def _pairs(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        pairs = {}
        for part in split_commas(value):
            key, sep, tag_value = part.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"'{part}' is not key=value")
            pairs[key.strip()] = tag_value.strip()
        return pairs


LISTING = "`medvlm report --help` lists every report parameter"


def report_config(values: dict[str, Any]) -> ReportConfig:
    """The validated config from flags/-P values; None and "" mean "not given"."""
    given = {k: v for k, v in values.items() if k in ReportConfig.model_fields and v is not None and v != ""}
    return validated(ReportConfig, given, LISTING)

