"""Regenerate MLproject from the config schema, so `-P` names can never drift from RunConfig.

Usage: python scripts/gen_mlproject.py > MLproject   (tests/test_config.py checks it is current)
"""

from __future__ import annotations

from medvlm.config import RunConfig

TRAINING_ONLY = {"strategy", "epochs", "batch_size", "lr", "weight_decay", "optimizer", "grad_accum", "patience",
                 "head_init", "lora_r", "lora_alpha", "lora_dropout", "lora_targets", "lora_text", "register_adapter",
                 "resume", "checkpoint_dir", "vqa_hidden", "vqa_glimpses"}


def entry_point_params() -> dict[str, list[str]]:
    fields = list(RunConfig.model_fields)
    return {
        "zeroshot": ["config"] + [f for f in fields if f not in TRAINING_ONLY],
        "finetune": ["config"] + fields,
    }


def default_of(name: str) -> str:
    """The schema's static default; "" where it depends on the environment (data_root, checkpoint_dir)."""
    field = RunConfig.model_fields.get(name)
    if field is None or field.default_factory is not None or field.default is None:
        return ""
    return str(field.default)


def render() -> str:
    lines = ["name: medvlm", "", "conda_env: conda.yaml", "", "entry_points:"]
    for name, params in entry_point_params().items():
        lines += [f"  {name}:", "    parameters:"]
        lines += [f'      {p}: {{type: string, default: "{default_of(p)}"}}' for p in params]
        args = " ".join(f"--{p} {{{p}}}" for p in params)
        lines += [f'    command: "python entrypoints/{name}.py {args}"', ""]
    return "\n".join(lines)


if __name__ == "__main__":
    print(render(), end="")
