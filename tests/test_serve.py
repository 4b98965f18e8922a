"""dfdtrain serve for real: the server started on 127.0.0.1 with the small trained detector, real fixture videos,
broken uploads, concurrent requests, confined paths, and the page driven by Debian's chromium."""

import concurrent.futures
import json
import os
import queue
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from conftest import run_cli

VIDEOS = {"dfdc": "dfdc/dfdc_train_part_0/brtujopkby.mp4",
          "ffpp_real": "ffpp/original_sequences/youtube/c40/videos/183.mp4",
          "ffpp_fake": "ffpp/manipulated_sequences/Deepfakes/c40/videos/183_253.mp4"}
MAX_MB = 8
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def videos(fixtures):
    found = {name: fixtures / path for name, path in VIDEOS.items()}
    missing = [str(path) for path in found.values() if not path.is_file()]
    assert not missing, f"fixture videos not found: {missing}"
    return found


@pytest.fixture(scope="module")
def server(trained_run, videos, tmp_path_factory):
    """`dfdtrain serve` in its own process: uploads staged in ``uploads``, JSON paths confined to ``allowed``."""
    root = tmp_path_factory.mktemp("serve")
    uploads, allowed = root / "uploads", root / "allowed"
    allowed.mkdir()
    shutil.copyfile(videos["ffpp_real"], allowed / "real.mp4")
    (allowed / "escape.mp4").symlink_to(videos["ffpp_fake"])  # inside by name, outside by target
    port = free_port()
    log = open(root / "serve.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "dfdtrain", "serve", "--checkpoint", str(trained_run), "--port", str(port),
         "--device", "cpu", "--faces", "none", "--allow-paths", str(allowed), "--upload-dir", str(uploads),
         "--max-mb", str(MAX_MB), "--batch-size", "4"], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while True:
        try:
            if requests.get(f"{url}/healthz", timeout=2).ok:
                break
        except requests.ConnectionError:
            pass
        if process.poll() is not None or time.time() > deadline:
            process.kill()
            pytest.fail(f"dfdtrain serve did not start: {(root / 'serve.log').read_text()[-2000:]}")
        time.sleep(0.5)
    yield {"url": url, "uploads": uploads, "allowed": allowed, "root": root}
    process.terminate()
    process.wait(timeout=30)
    log.close()


def post_file(server, path, name=None, **params):
    with open(path, "rb") as handle:
        return requests.post(f"{server['url']}/api/predict", files={"file": (name or Path(path).name, handle)},
                             params=params, timeout=300)


def assert_uploads_empty(server):
    assert not any(server["uploads"].iterdir()), sorted(server["uploads"].iterdir())


def test_api_answers_as_predict_does(server, videos, trained_run):
    cli = run_cli("predict", "--checkpoint", trained_run, "--faces", "none", "--json", "--quiet", *videos.values())
    assert cli.returncode == 0, cli.stderr[-2000:]
    expected = {Path(result["path"]).name: result for result in json.loads(cli.stdout)}
    for path in videos.values():
        response = post_file(server, path)
        assert response.status_code == 200, response.text
        result = response.json()
        wanted = expected[path.name]
        assert result["path"] == path.name
        assert result["p_fake"] == pytest.approx(wanted["p_fake"], abs=1e-5)
        assert result["step_scores"] == pytest.approx(wanted["step_scores"], abs=1e-5)
        same = ("verdict", "threshold", "frames_used", "faces_found", "video")
        assert {key: result[key] for key in same} == {key: wanted[key] for key in same}
        assert set(result) == set(wanted) and "crops" not in result
    with_crops = post_file(server, videos["ffpp_real"], crops=1).json()
    assert len(with_crops["crops"]) == with_crops["frames_used"]
    assert all(url.startswith("data:image/jpeg;base64,") for url in with_crops["crops"])

    model = requests.get(f"{server['url']}/api/model", timeout=10).json()
    settings = json.loads((trained_run / "checkpoints" / "best" / "detector.json").read_text())
    assert (model["backbone"], model["head"], model["name"]) == ("mobilenetv2_050", "gru", settings["name"])
    assert model["threshold"] == settings["threshold"] and model["calibration"] == settings["calibration"]
    assert model["clip"]["sampler"]["num_frames"] == 4 and model["limits"]["max_mb"] == MAX_MB
    assert requests.get(f"{server['url']}/healthz", timeout=10).json()["status"] == "ok"
    assert_uploads_empty(server)


def test_bad_uploads_get_4xx_json_and_the_service_keeps_serving(server, videos, trained_run, tmp_path):
    data = videos["ffpp_real"].read_bytes()
    bad = {"empty.mp4": b"", "truncated.mp4": data[: len(data) // 3], "notes.txt": b"not a video\n" * 50}
    for name, content in bad.items():
        (tmp_path / name).write_bytes(content)
    cli = run_cli("predict", "--checkpoint", trained_run, "--faces", "none", "--json", "--quiet",
                  *(tmp_path / name for name in bad))
    expected = {Path(result["path"]).name: result["error"] for result in json.loads(cli.stdout)}
    for name in bad:
        response = post_file(server, tmp_path / name)
        assert response.status_code == 422, (name, response.status_code, response.text)
        body = response.json()
        assert body == {"path": name, "error": expected[name].replace(str(tmp_path / name), name)}
        assert "\n" not in body["error"] and str(server["uploads"]) not in body["error"]  # no staging path
    (tmp_path / "big.mp4").write_bytes(os.urandom((MAX_MB + 1) * 1024 * 1024))
    too_large = post_file(server, tmp_path / "big.mp4")
    assert too_large.status_code == 413 and "--max-mb" in too_large.json()["error"]
    no_field = requests.post(f"{server['url']}/api/predict", files={"video": ("a.mp4", data)}, timeout=60)
    assert no_field.status_code == 400 and "'file'" in no_field.json()["error"]
    not_json = requests.post(f"{server['url']}/api/predict", data=b"{oops",
                             headers={"content-type": "application/json"}, timeout=60)
    assert not_json.status_code == 400 and "JSON" in not_json.json()["error"]
    assert post_file(server, videos["ffpp_real"]).status_code == 200  # still serving
    assert_uploads_empty(server)


def test_sixteen_concurrent_requests_are_all_answered(server, videos):
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda number: post_file(server, videos["ffpp_real"], name=f"copy{number}.mp4"),
                                  range(16)))
    assert [response.status_code for response in responses] == [200] * 16
    results = [response.json() for response in responses]
    assert [result["path"] for result in results] == [f"copy{number}.mp4" for number in range(16)]
    assert len({round(result["p_fake"], 6) for result in results}) == 1  # batched together, scored alike
    assert_uploads_empty(server)


def test_paths_are_confined_to_allow_paths(server, videos):
    def ask(path):
        return requests.post(f"{server['url']}/api/predict", json={"path": path}, timeout=120)

    inside = ask("real.mp4")
    assert inside.status_code == 200 and inside.json()["path"] == "real.mp4"
    assert inside.json()["p_fake"] == pytest.approx(post_file(server, videos["ffpp_real"]).json()["p_fake"], abs=1e-9)
    for outside in ("../serve.log", str(videos["ffpp_fake"]), "escape.mp4"):
        refused = ask(outside)
        assert refused.status_code == 403 and "outside --allow-paths" in refused.json()["error"], outside
    assert ask("nothing.mp4").status_code == 404
    assert ask(None).status_code == 400


def test_the_app_factory_times_out_without_losing_uploads(trained_run, videos, tmp_path):
    from fastapi.testclient import TestClient

    from dfdtrain.serve import create_app

    app = create_app(trained_run, faces="none", timeout=0.01, upload_dir=tmp_path / "uploads")
    with TestClient(app) as client:
        assert client.get("/healthz").json()["status"] == "ok"
        with open(videos["ffpp_real"], "rb") as handle:
            response = client.post("/api/predict", files={"file": ("a.mp4", handle)})
        assert response.status_code == 504 and "timed out" in response.json()["error"]
        deadline = time.time() + 60  # the model finishes the job it started, then the upload goes
        while any((tmp_path / "uploads").iterdir()) and time.time() < deadline:
            time.sleep(0.2)
        assert not any((tmp_path / "uploads").iterdir())
        assert "<canvas" in client.get("/").text


def test_a_full_queue_is_refused():
    from dfdtrain.serve import ModelWorker

    class Blocked:  # a predictor that holds the worker until released, to fill the queue behind it
        release = threading.Event()

        def predict(self, paths, crops=False):
            self.release.wait(30)
            return [{"path": path, "p_fake": 0.5} for path in paths]

    worker = ModelWorker(Blocked(), queue_size=2, batch_size=1)
    first = worker.submit("a")
    time.sleep(0.2)  # the worker holds "a"; two more fill the queue
    queued = [worker.submit("b"), worker.submit("c")]
    with pytest.raises(queue.Full):
        worker.submit("d")
    Blocked.release.set()
    assert [future.result(10)["path"] for future in (first, *queued)] == ["a", "b", "c"]
    worker.stop()


def chromium_driver():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()):
        pytest.fail("Debian's chromium and chromium-driver are needed (apt-get install chromium chromium-driver; "
                    ".ci/run installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1000,900"):
        options.add_argument(argument)
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))


def test_the_page_in_headless_chromium(server, videos, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    expected = post_file(server, videos["ffpp_fake"]).json()
    driver = chromium_driver()
    try:
        driver.get(server["url"] + "/")
        WebDriverWait(driver, 30).until(lambda page: "mobilenetv2_050 + gru" in page.find_element(By.ID, "model").text)

        def finished(page):
            return page.find_element(By.TAG_NAME, "body").get_attribute("data-state") in ("done", "error")

        driver.find_element(By.ID, "file").send_keys(str(videos["ffpp_fake"]))
        WebDriverWait(driver, 120).until(finished)
        assert driver.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "done"
        assert driver.find_element(By.ID, "verdict").text == expected["verdict"]
        assert driver.find_element(By.ID, "pfake").text.startswith(f"P(fake) = {expected['p_fake']:.3f}")
        assert "183_253.mp4: 4 frames used" in driver.find_element(By.ID, "details").text
        # the score plot is drawn: the canvas holds the axes, the line and one dot per step
        drawn = driver.execute_script(
            "const c = document.getElementById('scores'); const d = c.getContext('2d')"
            ".getImageData(0, 0, c.width, c.height).data; let n = 0;"
            "for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n;")
        assert drawn > 2000, drawn
        crops = driver.find_elements(By.CSS_SELECTOR, "#crops img")
        assert len(crops) == expected["frames_used"]
        assert all(driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image) == 48
                   for image in crops)
        driver.save_screenshot(str(tmp_path / "page.png"))
        assert (tmp_path / "page.png").stat().st_size > 20_000

        (tmp_path / "notes.txt").write_text("not a video\n")
        driver.find_element(By.ID, "file").send_keys(str(tmp_path / "notes.txt"))
        WebDriverWait(driver, 60).until(lambda page: page.find_element(By.TAG_NAME, "body")
                                        .get_attribute("data-state") == "error")
        message = driver.find_element(By.ID, "error").text
        assert message.startswith("Could not analyse notes.txt: undecodable"), message
        assert not driver.find_element(By.ID, "result").is_displayed()
    finally:
        driver.quit()
    assert_uploads_empty(server)
