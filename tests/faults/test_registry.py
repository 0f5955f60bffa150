"""Registry faults: concurrent registrations leave `best` on the best version; same base name, different data,
different registered models."""

from __future__ import annotations

import multiprocessing as mp

from mlflow.tracking import MlflowClient

from medvlm.adapters.base import ALIAS, point_best_alias, registered_name

NAME = "medvlm-race-test-classification"


def register_versions(uri: str, scores: list[float], first: bool, ready) -> None:
    """One 'worker': register versions with their val AUC, then point the alias, as `log_adapter` does."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    if first:  # one worker creates the store's tables and the model; the others start together after it
        MlflowClient().create_registered_model(NAME)
        ready.set()
    ready.wait()
    client = MlflowClient()
    for score in scores:
        version = client.create_model_version(NAME, source="file:///nowhere", run_id=None)
        client.set_model_version_tag(NAME, version.version, "val_auc", str(score))
        point_best_alias(client, NAME, "val_auc", higher=True)


def test_concurrent_registrations_leave_best_on_the_best_version(workdir):
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    scores = [[0.353, 0.41, 0.2], [0.668, 0.1, 0.3], [0.5, 0.6, 0.05], [0.2, 0.65, 0.66]]
    ctx = mp.get_context("fork")  # no store is open in this process yet; children import nothing anew
    ready = ctx.Event()
    workers = [ctx.Process(target=register_versions, args=(uri, s, i == 0, ready)) for i, s in enumerate(scores)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=300)
        assert w.exitcode == 0
    client = MlflowClient(uri)
    versions = client.search_model_versions(f"name='{NAME}'")
    assert len(versions) == 12
    best = max(versions, key=lambda mv: float(mv.tags["val_auc"]))
    assert float(best.tags["val_auc"]) == 0.668
    assert client.get_model_version_by_alias(NAME, ALIAS).version == best.version


def test_registered_names_differ_for_different_data_with_the_same_base_name(tmp_path):
    a, b = tmp_path / "a" / "labels.csv", tmp_path / "b" / "labels.csv"
    names = {registered_name("biomedclip", str(p), "classification") for p in (a, b)}
    assert len(names) == 2 and all(n.startswith("medvlm-biomedclip-labels.csv-") for n in names)
    assert registered_name("biomedclip", "breastmnist", "classification") == "medvlm-biomedclip-breastmnist-classification"
