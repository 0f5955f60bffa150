"""Report parameters (one-line errors, like every medvlm parameter) and the ID/OOD rule."""

from __future__ import annotations

import pytest

from medvlm.cli import main
from medvlm.errors import ConfigError
from medvlm.report.config import report_config
from medvlm.report.domains import dataset_modality, domain_of, model_coverage


def test_values_arrive_as_strings_and_empty_means_not_given():
    cfg = report_config({"experiment": "a, b", "study": "", "tags": "medvlm.dataset=breastmnist,medvlm.seed=0",
                         "resamples": "2000", "confidence": "0.9", "parent_run": None})
    assert cfg.experiment == ["a", "b"] and cfg.study == [] and cfg.parent_run == []
    assert cfg.tags == {"medvlm.dataset": "breastmnist", "medvlm.seed": "0"}
    assert (cfg.resamples, cfg.confidence, cfg.seed, cfg.workers) == (2000, 0.9, 0, 0)
    assert report_config({}).experiment == []  # resolved like a run's experiment, at report time


@pytest.mark.parametrize("values, message", [
    ({"resamples": "10"}, "invalid parameter resamples='10': Input should be greater than or equal to 100"),
    ({"confidence": "1.5"}, "invalid parameter confidence='1.5'"),
    ({"tags": "medvlm.dataset"}, "'medvlm.dataset' is not key=value"),
    ({"workers": "-1"}, "invalid parameter workers='-1'"),
])
def test_bad_values_fail_in_one_line(values, message):
    with pytest.raises(ConfigError) as err:
        report_config(values)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_the_command_reports_a_bad_value_in_one_line_and_exits_2(capsys):
    assert main(["report", "--resamples", "5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("medvlm: error: invalid parameter resamples='5'") and "\n" not in err


@pytest.mark.parametrize("model, task, dataset, subset, expected", [
    ("biomedclip", "classification", "breastmnist", "", "ID"),        # universal biomedical covers ultrasound
    ("quiltnet", "classification", "breastmnist", "", "OOD"),         # pathology model, ultrasound data
    ("quiltnet", "classification", "pathmnist", "", "ID"),            # colon pathology
    ("cxr-clip", "classification", "pneumoniamnist", "", "ID"),       # chest X-ray on chest X-ray
    ("cxr-clip", "classification", "organamnist", "", "OOD"),         # chest X-ray model on abdominal CT
    ("pubmedclip", "retrieval", "roco", "radiology", "ID"),           # ROCO radiology
    ("pubmedclip", "retrieval", "roco", "non-radiology", "OOD"),
    ("clip-vit-b32", "vqa", "vqa_rad", "", "OOD"),                    # natural images: OOD on medical data
    ("biomedclip", "vqa", "slake", "", "ID"),
    ("local-dir:/x", "classification", "breastmnist", "", "?"),       # unknown model modality
    ("biomedclip", "classification", "my_table.csv", "", "?"),        # unknown dataset modality
])
def test_in_domain_compares_pretraining_and_dataset_modality(model, task, dataset, subset, expected):
    assert domain_of(model_coverage(model), dataset_modality(task, dataset, subset)) == expected
