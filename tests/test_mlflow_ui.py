"""MLflow's own UI, in a real headless Chromium driven by Selenium, over a store that real medvlm runs filled:
a LoRA fine-tune that registers its adapter (`@best`) and a 3-trial stability study. What a user opens
must render: readable run names, a test metric's value, the registered model with its alias and
signature inputs, and the study's trials under their parent.

`MEDVLM_UI_SCREENSHOTS=docs/ui` writes the README's screenshots from these very pages."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from medvlm.cli import main
from tests.conftest import BREAST_ROOT, REPO, needs_breastmnist

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed: pip install -e '.[test]'")
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

pytestmark = needs_breastmnist
BROWSER = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
DRIVER = shutil.which("chromedriver")
WAIT_S = 180  # a busy 2-core CI machine renders MLflow's React app slowly
SERVER_START_S = 240


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_model_dir) -> Iterator[dict]:
    """A SQLite store with one LoRA fine-tune (registered) and one stability study, logged by medvlm itself."""
    root = tmp_path_factory.mktemp("ui-store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    common = ["--model", f"local-dir:{tiny_model_dir}", "--dataset", "breastmnist", "--size", "28",
              "--data_root", str(BREAST_ROOT)]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        for name, value in {"MLFLOW_TRACKING_URI": uri, "MEDVLM_CACHE": str(root / "cache"),
                            "MEDVLM_CHECKPOINTS": str(root / "checkpoints")}.items():
            mp.setenv(name, value)
        for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_NAME"):
            mp.delenv(var, raising=False)
        mlflow.set_tracking_uri(uri)
        assert main(["finetune", *common, "--strategy", "lora", "--epochs", "2", "--lr", "1e-3"]) == 0
        assert main(["stability", *common, "--strategy", "linear", "--epochs", "1", "--trials", "3",
                     "--study", "stab"]) == 0
        client = MlflowClient(uri)
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        lora = next(r for r in runs if r.data.tags.get("medvlm.strategy") == "lora" and "medvlm.study" not in r.data.tags)
        parent = next(r for r in runs if r.data.tags.get("medvlm.study_role") == "parent")
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        (model,) = client.search_registered_models()
        yield {"root": root, "uri": uri, "client": client, "lora": lora, "parent": parent, "children": children,
               "model": model}


@pytest.fixture(scope="module")
def ui(store) -> Iterator[str]:
    """`mlflow ui` on 127.0.0.1 at a free port, over the store; its base URL once it answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_TRACKING_URI": store["uri"]}
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", store["uri"],
                             "--host", "127.0.0.1", "--port", str(port)], cwd=store["root"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_answering(proc, f"{url}/health")
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)


def _wait_until_answering(proc: subprocess.Popen, health: str) -> None:
    """Poll /health until it answers 200; fail with the server's stderr if it exits first."""
    for _ in range(SERVER_START_S * 5):
        try:
            with urllib.request.urlopen(health, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:  # refused, reset, or accepted but not answered within 5 s (TimeoutError): not up yet
            pass
        try:
            proc.wait(timeout=0.2)  # the pause between polls, which also notices a server that died
        except subprocess.TimeoutExpired:
            continue
        pytest.fail(f"mlflow ui exited with {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
    pytest.fail(f"mlflow ui did not answer {health} within {SERVER_START_S} s")


@pytest.fixture(scope="module")
def browser() -> Iterator:
    if not (BROWSER and DRIVER):
        pytest.skip("no Chromium and chromedriver on PATH: install Debian's chromium and chromium-driver "
                    "(.ci/run does) to run the browser test")
    options = webdriver.ChromeOptions()
    options.binary_location = BROWSER
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,800"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=webdriver.ChromeService(DRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def visible(driver, xpath: str):
    return WebDriverWait(driver, WAIT_S).until(EC.visibility_of_element_located((By.XPATH, xpath)))


def text_is(text: str, tag: str = "*") -> str:
    """XPath: a `tag` element whose whole text is exactly `text` (quotes escaped the XPath way)."""
    parts = text.split("'")
    literal = f"'{text}'" if len(parts) == 1 else "concat(" + ", \"'\", ".join(f"'{p}'" for p in parts) + ")"
    return f"//{tag}[normalize-space(.)={literal}]"


def screenshot(driver, name: str) -> None:
    """Save the page for the README when MEDVLM_UI_SCREENSHOTS names a folder (a small palette PNG); a relative
    folder is taken from the repository root, since the tests run in their own working folders."""
    if not os.environ.get("MEDVLM_UI_SCREENSHOTS"):
        return
    from io import BytesIO

    from PIL import Image

    folder = REPO / os.environ["MEDVLM_UI_SCREENSHOTS"]
    folder.mkdir(parents=True, exist_ok=True)
    image = Image.open(BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    image.quantize(colors=64).save(folder / f"{name}.png", optimize=True)


def open_runs_table(driver, ui: str, experiment_id: str) -> None:
    """The experiment as a new user lands on it (MLflow 3 opens GenAI), switched to 'Model training'."""
    driver.get(f"{ui}/#/experiments/{experiment_id}")
    switch = visible(driver, text_is("Model training"))
    driver.execute_script("arguments[0].click()", switch)  # a first-visit popover may cover it; the switch is what counts
    WebDriverWait(driver, WAIT_S).until(EC.url_contains("workflowType=machine_learning"))
    close_assistant(driver)


def close_assistant(driver) -> None:
    """Fold MLflow's assistant side panel (it opens itself on a first visit) so pages get the full width."""
    for button in driver.find_elements(By.XPATH, "//button[@aria-label='Close']"):
        if button.is_displayed():
            driver.execute_script("arguments[0].click()", button)


def test_runs_table_shows_readable_names_and_the_study_trials_under_their_parent(store, ui, browser):
    lora, parent, children = store["lora"], store["parent"], store["children"]
    assert len(children) == 3
    names = [lora.info.run_name, parent.info.run_name, *(c.info.run_name for c in children)]
    assert all("/" not in n and "breastmnist" in n for n in [lora.info.run_name, *names[2:]])  # readable, no paths
    assert len(set(names)) == 5  # the trials can be told apart

    open_runs_table(browser, ui, lora.info.experiment_id)
    assert visible(browser, text_is(lora.info.run_name, "a"))
    parent_link = visible(browser, text_is(parent.info.run_name, "a"))
    assert not browser.find_elements(By.XPATH, text_is(children[0].info.run_name))  # folded under the parent
    header = visible(browser, "//*[@role='columnheader' and normalize-space(.)='Run Name']")
    handle = header.find_element(By.XPATH, ".//*[contains(@class, 'ag-header-cell-resize')]")
    ActionChains(browser).drag_and_drop_by_offset(handle, 260, 0).perform()  # whole names, as a user would widen it
    WebDriverWait(browser, WAIT_S).until(lambda d: header.size["width"] > 400)
    screenshot(browser, "runs")

    parent_cell = parent_link.find_element(By.XPATH, "./ancestor::*[@role='gridcell'][1]")
    parent_cell.find_element(By.XPATH, ".//button").click()  # the expander beside the parent's name
    child_links = [visible(browser, text_is(c.info.run_name, "a")) for c in children]

    def row_index(link) -> int:
        return int(link.find_element(By.XPATH, "./ancestor::*[@role='row'][1]").get_attribute("row-index"))

    # Directly below the parent, indented further than it.
    assert sorted(map(row_index, child_links)) == [row_index(parent_link) + i for i in (1, 2, 3)]
    assert all(link.location["x"] > parent_link.location["x"] for link in child_links)
    screenshot(browser, "study")


def test_run_page_shows_a_test_metric_value(store, ui, browser):
    lora = store["lora"]
    value = lora.data.metrics["test_auc"]
    browser.get(f"{ui}/#/experiments/{lora.info.experiment_id}/runs/{lora.info.run_id}")
    visible(browser, text_is(lora.info.run_name))
    # the description medvlm writes renders as the run's Description, with the headline test result
    visible(browser, f"//p[contains(normalize-space(.), 'Test: test_auc {value:.4f}, test_acc')]")
    visible(browser, "//input[@placeholder='Search metrics']").send_keys("test_")
    name_cell = visible(browser, text_is("test_auc"))
    row = name_cell.find_element(By.XPATH, "./ancestor::*[@role='row'][1]")
    assert row.text.split()[:2] == ["test_auc", str(value)]
    WebDriverWait(browser, WAIT_S).until(EC.invisibility_of_element_located((By.XPATH, text_is("val_auc"))))
    close_assistant(browser)
    screenshot(browser, "run")


def test_registry_shows_the_model_at_best_and_its_signature_inputs(store, ui, browser):
    model, client = store["model"], store["client"]
    best = client.get_model_version_by_alias(model.name, "best")
    assert best.run_id == store["lora"].info.run_id
    browser.get(f"{ui}/#/models/{model.name}")
    version = visible(browser, text_is(f"Version {best.version}", "a"))
    version_row = version.find_element(By.XPATH, "./ancestor::*[@role='row'][1]")
    assert "@best" in version_row.text.replace(" ", "").split()
    close_assistant(browser)
    screenshot(browser, "registry")

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", store["uri"])
        signature = mlflow.models.get_model_info(f"models:/{model.name}@best").signature
    inputs = signature.inputs.input_names() if signature else []
    assert inputs, "the registered adapter has no signature"
    browser.get(f"{ui}/#/models/{model.name}/versions/{best.version}")
    inputs_row = visible(browser, f"//*[@role='row'][normalize-space(.)='Inputs ({len(inputs)})']")
    outputs_row = visible(browser, "//*[@role='row'][starts-with(normalize-space(.), 'Outputs (')]")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", inputs_row)
    inputs_row.click()  # the schema's sections start folded
    for name in inputs:  # each input's row ("image (required)  binary") between the Inputs and Outputs headers
        row = visible(browser, f"//*[@role='row'][starts-with(normalize-space(.), '{name} ') or normalize-space(.)='{name}']")
        assert inputs_row.location["y"] < row.location["y"] < outputs_row.location["y"]
    close_assistant(browser)
    screenshot(browser, "version")
