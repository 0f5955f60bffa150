"""One schema: YAML, flags and MLproject parameters map onto RunConfig, with one-line errors."""

from __future__ import annotations

import yaml

import pytest
import torch

from medvlm.cli import build_parser, overrides_from
from medvlm.config import RunConfig, build_config
from medvlm.data.transforms import to_model_input
from medvlm.errors import ConfigError
from medvlm.report.config import ReportConfig
from medvlm.studies.spec import STUDY_FLAGS
from medvlm.zoo.base import Preprocess
from scripts.gen_mlproject import entry_point_params, render
from tests.conftest import REPO


def test_yaml_then_flags_precedence(tmp_path):
    spec = tmp_path / "exp.yaml"
    spec.write_text(yaml.safe_dump({"model": "clip-vit-b32", "dataset": "breastmnist", "lr": 0.01, "epochs": 7}))
    cfg = build_config({"config": str(spec), "lr": "0.5", "batch_size": ""})
    assert (cfg.lr, cfg.epochs, cfg.batch_size) == (0.5, 7, 64)
    assert cfg.resolved()["lr"] == 0.5


def test_base_cell_is_overridden_by_yaml_and_flags(tmp_path):
    spec = tmp_path / "exp.yaml"
    spec.write_text("epochs: 3\n")
    cfg = build_config({"config": str(spec), "seed": "9"}, base={"model": "m", "dataset": "d", "epochs": 1, "seed": 1})
    assert (cfg.epochs, cfg.seed) == (3, 9)


@pytest.mark.parametrize("overrides, message", [
    ({"model": "m", "dataset": "d", "lrr": 1}, "unknown parameter 'lrr' (did you mean 'lr'?)"),
    ({"dataset": "d"}, "missing parameter 'model'"),
    ({"model": "m", "dataset": "d", "lora_dropout": "1.5"}, "invalid parameter lora_dropout='1.5'"),
    ({"model": " ", "dataset": "d"}, "invalid parameter model"),
])
def test_one_line_errors(overrides, message):
    with pytest.raises(ConfigError) as exc:
        build_config(overrides)
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_bad_yaml_file(tmp_path):
    (tmp_path / "bad.yaml").write_text("lr: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        build_config({"config": str(tmp_path / "bad.yaml")})
    with pytest.raises(ConfigError, match="config file not found"):
        build_config({"config": str(tmp_path / "missing.yaml")})


def test_flags_cover_every_field_in_both_spellings():
    args = build_parser().parse_args(["finetune", "--model", "m", "--dataset", "d", "--lora-r", "4", "--lora_alpha", "8"])
    cfg = build_config(overrides_from(args))
    assert (cfg.lora_r, cfg.lora_alpha) == (4, 8.0)


def test_mlproject_is_generated_from_the_schema():
    assert (REPO / "MLproject").read_text() == render(), "run: python scripts/gen_mlproject.py > MLproject"
    project = yaml.safe_load((REPO / "MLproject").read_text())
    assert set(entry_point_params()["finetune"]) == set(RunConfig.model_fields) | {"config"}
    for name, entry in project["entry_points"].items():
        for param in entry["parameters"]:
            assert f"--{param} {{{param}}}" in entry["command"], (name, param)
            known = ReportConfig.model_fields if name == "report" else [*RunConfig.model_fields, "config", "spec", *STUDY_FLAGS]
            assert param in known, (name, param)


def test_preprocess_reaches_the_pixels():
    """Grayscale to 3 channels, resize to the model size, then (x/255 - mean) / std per channel."""
    pre = Preprocess(image_size=8, mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 0.125))
    flat = torch.full((2, 1, 4, 4), 51, dtype=torch.uint8)
    out = to_model_input(flat, pre)
    assert out.shape == (2, 3, 8, 8)
    for c in range(3):
        torch.testing.assert_close(out[:, c], torch.full((2, 8, 8), (0.2 - pre.mean[c]) / pre.std[c]))
    rgb = torch.randint(0, 256, (1, 3, 8, 8), dtype=torch.uint8)
    expected = (rgb.float() / 255 - torch.tensor(pre.mean).view(1, 3, 1, 1)) / torch.tensor(pre.std).view(1, 3, 1, 1)
    torch.testing.assert_close(to_model_input(rgb, pre), expected)


@pytest.mark.parametrize(("flags", "expected"), [
    (["--subsample-val"], True), (["--subsample_val", "--lora-text"], True), (["--no-subsample-val"], False),
    (["--subsample_val", "false"], False), (["--subsample_val", "true"], True), (["--subsample_val", ""], False),
    ([], False)])
def test_boolean_parameters_are_switches(flags, expected):
    args = build_parser().parse_args(["finetune", "--model", "m", "--dataset", "d", *flags, "--epochs", "2"])
    cfg = build_config(overrides_from(args))
    assert (cfg.subsample_val, cfg.epochs) == (expected, 2)


def test_study_and_negated_switches():
    args = build_parser().parse_args(["stability", "--model", "m", "--dataset", "d", "--dry-run", "--no-register-adapter"])
    assert (args.dry_run, args.register_adapter, args.summarize_only) == ("true", "false", None)
    with pytest.raises(ConfigError, match="--no-dry-run takes no value"):
        build_parser().parse_args(["stability", "--no-dry-run", "true"])


def test_params_lists_every_entry_point_parameter(capsys):
    from medvlm.cli import main

    assert main(["params"]) == 0
    out = capsys.readouterr().out
    sections = {block.split(":", 1)[0]: block for block in out.strip().split("\n\n")}
    project = yaml.safe_load((REPO / "MLproject").read_text())
    for name, entry in project["entry_points"].items():
        listed = {line.split()[0] for line in sections[name].splitlines()[1:]}
        assert set(entry["parameters"]) <= listed, (name, set(entry["parameters"]) - listed)
    assert "switch: --dry_run / --no-dry_run" in sections["stability"]
    assert "resamples" in sections["report"] and "resamples" not in sections["finetune"]
