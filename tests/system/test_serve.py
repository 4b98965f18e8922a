"""dfdtrain serve for real: the server started on 127.0.0.1 with the small trained detector, real fixture videos,
broken uploads, concurrent requests, confined paths, hostile clients (oversized, many-part, trickled, disconnecting,
odd JSON) over plain sockets, and the page driven by Debian's chromium."""

import concurrent.futures
import http.client
import json
import os
import queue
import select
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from support import chromium_driver, free_port, run_cli

VIDEOS = {"dfdc": "dfdc/dfdc_train_part_0/brtujopkby.mp4",
          "ffpp_real": "ffpp/original_sequences/youtube/c40/videos/183.mp4",
          "ffpp_fake": "ffpp/manipulated_sequences/Deepfakes/c40/videos/183_253.mp4"}
MAX_MB = 8
BODY_TIMEOUT = 3  # the server's --body-timeout: short, so that a trickling client is cut off quickly


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
         "--max-mb", str(MAX_MB), "--batch-size", "4", "--body-timeout", str(BODY_TIMEOUT)],
        stdout=log, stderr=subprocess.STDOUT)
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
    yield {"url": url, "uploads": uploads, "allowed": allowed, "root": root, "port": port, "pid": process.pid}
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

    from dfdtrain.inference.service import create_app

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
    from dfdtrain.inference.service import ModelWorker

    class Blocked:  # a predictor that holds the worker until released, to fill the queue behind it
        release = threading.Event()

        def predict(self, paths, crops=False, explain=False):
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


# --- limits: what a hostile or broken client can make the server hold (bytes, files, parts, time) ------------------

def multipart(parts, boundary="dfdtrain-test-boundary"):
    """(content type, body) of a multipart/form-data body; ``parts``: (field name, file name or None, bytes)."""
    pieces = []
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        pieces.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + content + b"\r\n")
    return f"multipart/form-data; boundary={boundary}", b"".join(pieces) + f"--{boundary}--\r\n".encode()


def head(server, content_type, length=None):
    """The request head of POST /api/predict: with Content-Length ``length``, or chunked when it is None."""
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return (f"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1:{server['port']}\r\nContent-Type: {content_type}\r\n"
            f"{framing}\r\n\r\n").encode()


def chunked(*pieces, end=True):
    """``pieces`` in chunked transfer encoding (the closing zero chunk unless ``end`` is False)."""
    return b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + (b"0\r\n\r\n" if end else b"")


def raw_post(server, request_head, pieces, pause=0.0, timeout=15):
    """Send ``request_head`` then ``pieces`` over one socket, ``pause`` s apart, as a misbehaving client would,
    stopping once the server has answered; then read the answer: (status, headers, JSON body, seconds taken)."""
    started = time.time()
    with socket.create_connection(("127.0.0.1", server["port"]), timeout=timeout) as sock:
        sock.sendall(request_head)
        for piece in pieces:
            if select.select([sock], [], [], pause)[0]:
                break  # answered early: stop sending
            sock.sendall(piece)
        response = http.client.HTTPResponse(sock)
        response.begin()
        body = response.read()
        return response.status, dict(response.getheaders()), json.loads(body), time.time() - started


def upload_files_held(server):
    """Paths under the upload folder that the server process holds open, deleted files included."""
    uploads, held = os.path.realpath(server["uploads"]), []
    for fd in Path(f"/proc/{server['pid']}/fd").iterdir():
        try:
            held.append(os.readlink(fd))
        except OSError:  # closed meanwhile
            continue
    return [path for path in held if path.startswith(uploads)]


def assert_nothing_left(server, seconds=5):
    """Within ``seconds``: no upload file held open by the server, none left on disk (a disconnect is noticed
    asynchronously, hence the wait)."""
    deadline = time.time() + seconds
    while (upload_files_held(server) or any(server["uploads"].iterdir())) and time.time() < deadline:
        time.sleep(0.1)
    assert upload_files_held(server) == []
    assert_uploads_empty(server)


def test_refused_uploads_leave_no_file_open_or_on_disk(server):
    content_type, body = multipart([("file", "big.mp4", os.urandom(MAX_MB * 1024 * 1024 + 100_000))])
    # too large, found while streaming (no Content-Length): refused with the staged file half written
    pieces = [chunked(body[start:start + (1 << 20)], end=False) for start in range(0, len(body), 1 << 20)]
    status, _, answer, _ = raw_post(server, head(server, content_type), pieces)
    assert status == 413 and "--max-mb" in answer["error"], answer
    # a parse error after the file part has begun
    content_type, small = multipart([("file", "a.mp4", b"x" * 100_000)])
    broken = small[:-len("--\r\n")] + b"\r\nno colon in this header line\r\n\r\n"
    status, _, answer, _ = raw_post(server, head(server, content_type), [chunked(broken)])
    assert status == 400 and "multipart" in answer["error"], answer
    # a body that ends without its closing boundary
    status, _, answer, _ = raw_post(server, head(server, content_type), [chunked(small[:50_000])])
    assert status == 400 and "multipart" in answer["error"], answer
    # a client that disconnects halfway through the file
    with socket.create_connection(("127.0.0.1", server["port"]), timeout=10) as sock:
        sock.sendall(head(server, content_type, len(small)) + small[:50_000])
        time.sleep(0.3)
    assert_nothing_left(server)
    # too large by Content-Length: refused before anything is read, and the connection closed
    status, headers, answer, _ = raw_post(server, head(server, content_type, len(body)), [body[:65536]])
    assert status == 413 and "--max-mb" in answer["error"] and headers.get("connection") == "close"
    assert_nothing_left(server)


def test_one_file_part_and_a_few_fields_per_request(server, videos):
    content_type, body = multipart([("file", f"part{number}.mp4", b"x" * 20) for number in range(1500)])
    response = requests.post(f"{server['url']}/api/predict", data=body, headers={"content-type": content_type},
                             timeout=60)
    assert response.status_code == 400 and "one file" in response.json()["error"], response.text
    fields = [(f"field{number}", None, b"value") for number in range(100)]
    content_type, body = multipart([*fields, ("file", "a.mp4", videos["ffpp_real"].read_bytes())])
    response = requests.post(f"{server['url']}/api/predict", data=body, headers={"content-type": content_type},
                             timeout=60)
    assert response.status_code == 400 and "form fields" in response.json()["error"], response.text
    assert_nothing_left(server)
    # a file and a few fields are fine
    content_type, body = multipart([("note", None, b"hello"), ("file", "a.mp4", videos["ffpp_real"].read_bytes())])
    response = requests.post(f"{server['url']}/api/predict", data=body, headers={"content-type": content_type},
                             timeout=120)
    assert response.status_code == 200 and response.json()["path"] == "a.mp4", response.text
    assert_nothing_left(server)


def ask_path(server, path):
    return requests.post(f"{server['url']}/api/predict", json={"path": path}, timeout=60)


def test_json_bodies_are_bounded_and_never_echoed(server):
    # 64 MB announced: refused by Content-Length at once, without waiting for the body
    status, headers, answer, seconds = raw_post(server, head(server, "application/json", 64 << 20),
                                                [b'{"path": "' + b"a" * 1000], timeout=10)
    assert status == 413 and "JSON" in answer["error"] and seconds < 5 and headers.get("connection") == "close"
    # 1 MB streamed without a length: refused once past the bound
    pieces = [chunked(b'{"path": "', end=False)] + [chunked(b"a" * 65536, end=False)] * 16
    status, _, answer, _ = raw_post(server, head(server, "application/json"), pieces, timeout=10)
    assert status == 413 and "JSON" in answer["error"]
    # a long path within the bound: the error quotes a short, escaped prefix of it
    for path in ("a" * 60_000, "line\nbreak\u202e<script>" * 2000):
        response = ask_path(server, path)
        assert response.status_code == 404 and len(response.text) < 400, response.text[:400]
        assert "\n" not in response.json()["error"] and "\u202e" not in response.json()["error"]


def test_bad_json_paths_are_400_not_500(server):
    assert ask_path(server, "real\0.mp4").status_code == 400
    assert ask_path(server, "real\ud800.mp4").status_code == 400  # a lone surrogate: no file name can hold it
    nested = requests.post(f"{server['url']}/api/predict", data=b"[" * 30_000 + b"]" * 30_000,
                           headers={"content-type": "application/json"}, timeout=60)
    assert nested.status_code == 400 and "JSON" in nested.json()["error"], nested.text
    assert ask_path(server, "real.mp4").status_code == 200  # still serving


def test_a_trickled_upload_is_cut_off_at_the_body_timeout(server):
    content_type, body = multipart([("file", "slow.mp4", b"x" * 1000)])
    pieces = [chunked(body[:300], end=False)] + [chunked(b"x", end=False)] * 40  # a byte every 0.25 s: 10 s
    status, headers, answer, seconds = raw_post(server, head(server, content_type), pieces, pause=0.25)
    assert status == 408 and "--body-timeout" in answer["error"] and headers.get("connection") == "close"
    assert BODY_TIMEOUT <= seconds < BODY_TIMEOUT + 3, seconds
    assert_nothing_left(server)


@pytest.mark.parametrize("option, value", [("--max-mb", "nan"), ("--max-mb", "inf"), ("--timeout", "0"),
                                           ("--body-timeout", "-1")])
def test_float_options_must_be_finite_and_positive(trained_run, option, value):
    result = run_cli("serve", "--checkpoint", trained_run, "--faces", "none", "--port", str(free_port()),
                     option, value)
    assert result.returncode == 2 and result.stderr.startswith(f"dfdtrain serve: error: argument {option}"), \
        result.stderr[-2000:]
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


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
        # one scale: the plotted step scores and the threshold line are both on the verdict's (calibrated) scale,
        # so the GRU's last step sits at P(fake), on the verdict's side of the line; the captions say the same
        values, threshold, scale = driver.execute_script(
            "const c = document.getElementById('scores');"
            "return [JSON.parse(c.dataset.values), Number(c.dataset.threshold), c.dataset.scale];")
        assert scale == expected["scales"]["step_scores"] == expected["scales"]["threshold"] == "calibrated"
        assert threshold == expected["threshold"]
        assert values == pytest.approx(expected["step_scores"], abs=1e-9)
        assert values[-1] == pytest.approx(expected["p_fake"], abs=1e-6)
        assert (values[-1] >= threshold) == (expected["verdict"] == "FAKE")
        captions = [caption.text for caption in driver.find_elements(By.CSS_SELECTOR, "#crops figcaption")]
        assert captions == [f"{number}: {value:.2f}" for number, value in enumerate(values, 1)]
        assert f"raw {expected['p_fake_raw']:.3f}" in driver.find_element(By.ID, "pfake").text
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
