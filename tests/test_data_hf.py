"""`dataset=hf:...`: Hugging Face `datasets` for every task, from `save_to_disk` folders this test writes out
of the real BreastMNIST, VQA-RAD and ROCO sample; each is checked against medvlm's native reader of the
same data, and the classification and retrieval ones also through a tiny-model zero-shot run."""

from __future__ import annotations


import datasets
import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value
from mlflow.tracking import MlflowClient

from medvlm.cli import main
from medvlm.config import build_config
from medvlm.data.captions import load_captions
from medvlm.data.classification import load_classification
from medvlm.data.medmnist import load_medmnist
from medvlm.data.vqa import load_vqa, read_vqa
from medvlm.errors import ConfigError, DataError
from tests.conftest import BREAST_ROOT, SHARED_DATA, needs_breastmnist
from tests.retrieval_fixtures import ROCO_ROOT, needs_roco

VQA_RAD = SHARED_DATA / "vqa_rad"
needs_vqa_rad = pytest.mark.skipif(not (VQA_RAD / "VQA_RAD Dataset Public.json").is_file(),
                                   reason=f"real VQA-RAD not found at {VQA_RAD} (../shared/data beside the checkout, "
                                          f"or set MEDVLM_SHARED_DATA)")
HF_SPLIT = {"train": "train", "val": "validation", "test": "test"}


def _zeroshot(tiny_model_dir, experiment: str, *args: str) -> mlflow.entities.Run:
    assert main(["zeroshot", "--model", f"local-dir:{tiny_model_dir}", "--experiment", experiment, *args]) == 0
    client = MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return run


def test_the_hf_syntax_is_checked_by_the_config_schema():
    cfg = build_config({"model": "m", "dataset": "hf:org/name?config=en&val=valid&test=test"})
    assert cfg.dataset == "hf:org/name?config=en&val=valid&test=test"
    for bad, words in [("hf:org/name?split=test", "unknown option 'split'"), ("hf:?config=x", "names no dataset"),
                       ("hf:org/name?test=", "leaves 'test' empty"), ("hf:o/n?test=a&test=b", "sets 'test' twice")]:
        with pytest.raises(ConfigError, match=rf"invalid parameter dataset=.*{words}.*hf:ORG/NAME") as err:
            build_config({"model": "m", "dataset": bad})
        assert "\n" not in str(err.value)


@needs_breastmnist
def test_classification_from_a_saved_breastmnist_matches_the_npz(tmp_path, workdir, tiny_model_dir):
    native = load_medmnist("breastmnist", 28, BREAST_ROOT)
    arrays = np.load(BREAST_ROOT / "breastmnist.npz")
    features = Features({"image": Image(), "label": ClassLabel(names=native.class_names)})
    DatasetDict({HF_SPLIT[s]: Dataset.from_dict({"image": list(arrays[f"{s}_images"]),
                                                 "label": arrays[f"{s}_labels"][:, 0].tolist()}, features=features)
                 for s in ("train", "val", "test")}).save_to_disk(tmp_path / "breast-hf")

    data = load_classification(f"hf:{tmp_path / 'breast-hf'}", data_root=tmp_path, image_size=28)
    assert (data.kind, data.class_names) == ("binary", native.class_names)
    for split in ("train", "val", "test"):
        ours, theirs = data.splits[split], native.splits[split]
        assert len(ours) == len(theirs) == {"train": 546, "val": 78, "test": 156}[split]
        assert torch.equal(ours.labels, theirs.labels.reshape(-1).long())
        for i in (0, len(ours) - 1):  # PNG bytes decoded back to the very pixels of the npz
            assert torch.equal(ours[i][0], theirs[i][0].expand(3, -1, -1))

    # A zero-shot run reads it: every test image scored against its true label, lineage with the content digest.
    run = _zeroshot(tiny_model_dir, "hf", "--dataset", f"hf:{tmp_path / 'breast-hf'}", "--data_root", str(tmp_path))
    table = MlflowClient().load_table(run.info.experiment_id, "predictions.json", run_ids=[run.info.run_id])
    assert table["label"].tolist() == native.splits["test"].labels.reshape(-1).tolist()
    assert 0.0 <= run.data.metrics["test_auc"] <= 1.0 and run.info.status == "FINISHED"
    (test_input,) = [d for d in run.inputs.dataset_inputs if d.dataset.name == "breast-hf/test"]
    assert test_input.dataset.digest == data.splits["test"].digest()


@needs_vqa_rad
def test_vqa_from_a_saved_vqa_rad_with_renamed_columns_matches_the_json(tmp_path):
    native = read_vqa("vqa_rad", data_root=SHARED_DATA, seed=0)
    features = Features({"img": Image(), "q": Value("string"), "a": Value("string"), "answer_type": Value("string")})
    splits = {}
    for split, rows in native.rows.groupby("split"):
        splits[HF_SPLIT[split]] = Dataset.from_dict(
            {"img": rows["image_source"].tolist(), "q": rows["question"].tolist(), "a": rows["answer"].tolist(),
             "answer_type": np.where(rows["closed"], "CLOSED", "OPEN").tolist()}, features=features)
    DatasetDict(splits).save_to_disk(tmp_path / "vqa-hf")

    name = f"hf:{tmp_path / 'vqa-hf'}"
    with pytest.raises(DataError, match=r"has no column\(s\) \['answer', 'image', 'question'\].*set answer_column, "
                                        r"image_column, question_column"):
        read_vqa(name, data_root=tmp_path)
    ours = read_vqa(name, data_root=tmp_path, image_column="img", question_column="q", answer_column="a")
    assert ours.split == "the dataset's splits (train=train, val=validation, test=test)"

    def qa(rows):
        return sorted(zip(rows["image_name"], rows["question"], rows["answer"], rows["closed"]))

    for split in ("train", "val", "test"):
        mine, theirs = ours.rows[ours.rows["split"] == split], native.rows[native.rows["split"] == split]
        assert len(mine) == len(theirs) > 0 and qa(mine) == qa(theirs)

    # Decoded like the native images: the same pixels for every image.
    mine = load_vqa(name, data_root=tmp_path, image_column="img", question_column="q", answer_column="a", image_size=16)
    theirs = load_vqa("vqa_rad", data_root=SHARED_DATA, image_size=16)

    def pixels(data):
        rows = pd.concat(data.splits.values()).drop_duplicates("image_name")
        return {n: data.images[i] for n, i in zip(rows["image_name"], rows["image_index"])}

    assert mine.images.shape == theirs.images.shape == (314, 3, 16, 16)
    mine_px, theirs_px = pixels(mine), pixels(theirs)
    assert mine_px.keys() == theirs_px.keys() and all(torch.equal(mine_px[n], theirs_px[n]) for n in mine_px)


@needs_roco
def test_retrieval_from_a_saved_roco_sample_matches_the_native_layout(tmp_path, workdir, tiny_model_dir):
    native = load_captions("roco", data_root=SHARED_DATA, subset="radiology", splits=("test",)).splits["test"]
    Dataset.from_dict({"image": native.image_sources, "caption": native.captions},
                      features=Features({"image": Image(), "caption": Value("string")}),
                      split="test").save_to_disk(tmp_path / "roco-hf")

    data = load_captions(f"hf:{tmp_path / 'roco-hf'}", data_root=tmp_path, splits=("test",))
    ours = data.splits["test"]
    assert data.split == "the dataset's splits (test=test)" and data.source == str(tmp_path / "roco-hf")
    assert (ours.n_images, ours.captions) == (native.n_images, native.captions) == (5, native.captions)
    assert [n.removesuffix(".jpg") for n in ours.image_names] == native.image_names
    assert torch.equal(ours.images(24)[4][0], native.images(24)[4][0])

    args = ["--task", "retrieval", "--eval_batch_size", "8"]
    by_hf = _zeroshot(tiny_model_dir, "hf", "--dataset", f"hf:{tmp_path / 'roco-hf'}", "--data_root", str(tmp_path), *args)
    by_roco = _zeroshot(tiny_model_dir, "roco", "--dataset", "roco", "--data_root", str(SHARED_DATA),
                        "--subset", "radiology", *args)
    recalls = {k: v for k, v in by_roco.data.metrics.items() if "_R" in k}
    assert len(recalls) == 6 and {k: by_hf.data.metrics[k] for k in recalls} == recalls


def test_a_dataset_that_cannot_be_had_is_one_line_and_fast(workdir, offline, monkeypatch, tiny_model_dir, capsys):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)  # only medvlm's own check may turn it on
    code = main(["zeroshot", "--model", f"local-dir:{tiny_model_dir}", "--dataset", "hf:nobody-org/no-such-set",
                 "--data_root", str(workdir)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    (line,) = [e for e in err if e.startswith("medvlm: error")]
    assert "hf:nobody-org/no-such-set" in line and "not in the local cache" in line
    assert "save_to_disk it and pass dataset=hf:FOLDER" in line and "HF_HOME" in line
    (run,) = MlflowClient().search_runs([MlflowClient().get_experiment_by_name("Default").experiment_id])
    assert run.info.status == "FAILED" and "hf:nobody-org/no-such-set" in run.data.tags["medvlm.error"]


def test_a_study_preflight_locates_hf_datasets_without_reading_them(tmp_path, offline, monkeypatch):
    from medvlm.experiments.preflight import locate_data

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    Dataset.from_dict({"image": [b"not read"], "caption": ["c"]}, split="test").save_to_disk(tmp_path / "saved")
    found = build_config({"model": "m", "dataset": "hf:saved", "task": "retrieval", "data_root": str(tmp_path)})
    assert locate_data(found) == str(tmp_path / "saved")
    with pytest.raises(DataError, match=r"hf:nobody-org/gone cannot be loaded.*not in the local cache"):
        locate_data(build_config({"model": "m", "dataset": "hf:nobody-org/gone", "data_root": str(tmp_path)}))
