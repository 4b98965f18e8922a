"""Evidence maps (Grad-CAM, dfdtrain.models.explain): their size and pattern on a real video, the scoring pass they
share, every explainer kind, the blended box of synthetic fakes for a model trained by `dfdtrain demo`, the
`predict --explain DIR` files and the service's ``?explain=1``."""

import base64
import io
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from support import run_cli
from dfdtrain.commands.predict import format_explain
from dfdtrain.models.explain import NotExplainable, explain, explain_note, find_target, safe_key
from dfdtrain.inference.predict import Predictor

FFPP_FAKE = "ffpp/manipulated_sequences/Deepfakes/c40/videos/183_253.mp4"
FFPP_REAL = "ffpp/original_sequences/youtube/c40/videos/183.mp4"


def png_size(data):
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        return image.size


def test_maps_have_the_crop_size_and_a_pattern_on_a_real_video_and_share_the_scoring_pass(trained_run, fixtures):
    predictor = Predictor(trained_run, faces="none", progress=False)
    clip = predictor.prepare(str(fixtures / FFPP_FAKE))
    size = clip.frames.shape[1]

    video_logits, frame_logits, explanation = predictor.explained_logits([clip])
    plain_video, plain_frames = predictor.logits([clip])
    assert torch.allclose(video_logits, plain_video, atol=1e-5)
    assert torch.allclose(frame_logits, plain_frames, atol=1e-5)
    maps = explanation.maps
    assert maps.shape == (1, clip.frames.shape[0], size, size)  # [B,T,S,S]: the crop's size
    assert explanation.kind == "cnn" and explanation.layer.startswith("backbone.blocks")
    assert float(maps.min()) >= 0 and float(maps.max()) == pytest.approx(1.0)
    for frame in maps[0][clip.mask]:  # a pattern, not a constant: each frame has a peak and low ground
        assert float(frame.max()) == pytest.approx(1.0) and float(frame.std()) > 0.05, float(frame.std())

    # deterministic, and nothing left on the model: no hook, no gradient, still in eval mode
    again = predictor.explained_logits([clip])[2].maps
    assert torch.equal(again, maps)
    model = predictor.model
    assert not model.training
    assert all(parameter.grad is None for parameter in model.parameters())
    assert not any(module._forward_hooks for module in model.modules())


def test_every_explainer_kind_gives_per_frame_maps_that_follow_the_mask():
    from dfdtrain.models.detector import build_detector

    cases = [("mobilenetv2_050", "mean", {}, 64, "cnn"),
             ("vit_tiny_patch16_224", "mean", {"image_size": 32}, 32, "vit"),
             ("tall:resnet18", None, {"num_frames": 4, "image_size": 32}, 32, "tall"),
             ("r3d_18", None, {"num_frames": 4, "image_size": 32}, 32, "clip3d")]
    for backbone, head, options, size, kind in cases:
        torch.manual_seed(0)  # random weights: their maps are whatever they are, but the same every run
        model = build_detector(backbone, head, **options).eval()
        frames = torch.randn(2, 4, 3, size, size)
        mask = torch.tensor([[True] * 4, [True, True, True, False]])
        result = explain(model, frames, mask)
        with torch.no_grad():
            expected = model(frames, mask)
        assert torch.allclose(result.video_logits, expected[0], atol=1e-5), backbone
        assert result.kind == kind and result.maps.shape == (2, 4, size, size), (backbone, result.maps.shape)
        assert float(result.maps.min()) >= 0 and float(result.maps.max()) <= 1
        assert float(result.maps[1, 3].abs().max()) == 0  # padding: no map
        peaks = result.maps.flatten(2).amax(-1)[mask]
        assert peaks.gt(0).any() and torch.allclose(peaks[peaks > 0], torch.ones(1)), (backbone, peaks)
        assert not any(module._forward_hooks for module in model.modules())


def test_a_model_without_an_explainer_gets_a_note_and_its_scores(trained_run, fixtures):
    from dfdtrain.models.detector import build_detector

    mvit = build_detector("mvit_v2_s", None, num_frames=16)
    note = explain_note(mvit)
    assert note and "mvit_v2_s" in note and "\n" not in note
    with pytest.raises(NotExplainable):
        find_target(mvit)

    class Wrapped(torch.nn.Module):  # a model no explainer knows: predict still scores it, with a note
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, frames, mask):
            return self.inner(frames, mask)

    predictor = Predictor(trained_run, faces="none", progress=False)
    plain = predictor.predict([fixtures / FFPP_FAKE])[0]
    predictor.model = Wrapped(predictor.model)
    noted = predictor.predict([fixtures / FFPP_FAKE], explain=True)[0]
    assert noted["explain"] == {"note": "no maps: no explainer for Wrapped"}
    assert noted["p_fake"] == pytest.approx(plain["p_fake"], abs=1e-6)


def test_safe_keys_are_file_names_and_unique():
    taken = set()
    assert [safe_key(path, taken) for path in ("/a/x y.mp4", "/b/x y.mp4", "/c/../..mp4", "/d/é✓.webm")] == \
        ["x_y", "x_y-2", "video", "video-2"]


def inner_face_masks(clip, inner_faces, size):
    """bool [n,S,S]: the pixels of each crop inside the frame's blended ellipse (synth.json inner_faces)."""
    masks = []
    centres = (np.arange(size) + 0.5) / size
    for (x1, y1, x2, y2), index in zip(clip.regions, clip.indices):
        cx, cy, rx, ry = inner_faces[int(index)]
        xs = x1 + centres * (x2 - x1)
        ys = y1 + centres * (y2 - y1)
        masks.append(((xs[None, :] - cx) / rx) ** 2 + ((ys[:, None] - cy) / ry) ** 2 <= 1)
    return np.stack(masks)


def test_maps_of_a_demo_trained_model_put_the_mass_in_the_blended_box(demo_run, tmp_path):
    """Held-out synthetic fakes (another seed): the map's mean inside the blended ellipse beats its mean outside."""
    from dfdtrain.demo.synth import synthesize

    synthesize(tmp_path / "data", count=12, frames=24, width=128, height=128, seed=777, progress=False)
    meta = json.loads((tmp_path / "data" / "synth.json").read_text())
    fakes = sorted(name for name, entry in meta["files"].items() if entry["label"] == "fake")
    predictor = Predictor(demo_run["checkpoint"], faces="none", progress=False)
    clips = [predictor.prepare(str(tmp_path / "data" / name)) for name in fakes]
    video_logits, _, explanation = predictor.explained_logits(clips)
    assert torch.sigmoid(video_logits).mean() > 0.5  # the model does call them fake
    inside, outside, share, area = [], [], [], []
    for row, (name, clip) in enumerate(zip(fakes, clips)):
        used = int(clip.mask.sum())
        maps = explanation.maps[row, :used].numpy()
        box = inner_face_masks(clip, meta["files"][name]["inner_faces"], maps.shape[-1])
        for heatmap, region in zip(maps, box):
            inside.append(heatmap[region].mean())
            outside.append(heatmap[~region].mean())
            share.append(heatmap[region].sum() / max(heatmap.sum(), 1e-9))
            area.append(region.mean())
    ratio = float(np.mean(inside) / np.mean(outside))
    print(f"mean map inside the blended box {np.mean(inside):.3f}, outside {np.mean(outside):.3f} (ratio "
          f"{ratio:.2f}); share of the mass inside {np.mean(share):.2f} on {np.mean(area):.2f} of the area")
    assert ratio > 1.3, ratio  # measured: 1.60 (the same on every run: the demo and these clips are seeded)
    assert np.mean(share) > np.mean(area)  # measured: 0.108 of the mass on 0.076 of the area


def test_predict_explain_writes_png_overlays_and_says_where(trained_run, fixtures, tmp_path):
    first, second = tmp_path / "a" / "clip 1.mp4", tmp_path / "b" / "clip 1.mp4"  # one name twice: two keys
    for path, source in ((first, FFPP_FAKE), (second, FFPP_REAL)):
        path.parent.mkdir()
        shutil.copyfile(fixtures / source, path)
    out = tmp_path / "maps"
    result = run_cli("predict", "--checkpoint", trained_run, "--faces", "none", "--quiet", "--json",
                     "--explain", out, first, second)
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads(result.stdout)
    keys = []
    for entry in results:
        explained = entry["explain"]
        assert explained["method"] == "Grad-CAM" and "maps" not in explained  # files, not data URLs
        assert len(explained["files"]) == entry["frames_used"] == len(explained["frame_indices"])
        for path, index in zip(explained["files"], explained["frame_indices"]):
            assert path.endswith(f"-{index:03d}.png")
            assert png_size(open(path, "rb").read()) == (48, 48)  # the crop's size
        assert png_size(open(explained["strip"], "rb").read()) == (4 * 48 + 3 * 2, 2 * 48 + 2)
        keys.append(explained["strip"].rsplit("/", 1)[1])
    assert keys == ["clip_1-strip.png", "clip_1-2-strip.png"]
    assert len(list(out.iterdir())) == 2 * 5

    line = format_explain(results[0]["explain"])  # the human output's line under the video's result
    assert line.startswith("  maps (Grad-CAM on backbone.blocks") and str(out / "clip_1-strip.png") in line
    assert format_explain({"note": "no maps: why"}) == "  maps: no maps: why"
    refused = run_cli("predict", "--checkpoint", trained_run, "--explain", first, first)
    assert refused.returncode == 2 and "not a folder" in refused.stderr


def test_the_service_returns_maps_with_explain_1_and_the_page_draws_them(trained_run, fixtures):
    from fastapi.testclient import TestClient

    from dfdtrain.inference.service import create_app

    app = create_app(trained_run, faces="none")
    with TestClient(app) as client:
        with open(fixtures / FFPP_FAKE, "rb") as handle:
            explained = client.post("/api/predict", params={"explain": 1, "crops": 1},
                                    files={"file": ("fake.mp4", handle)}).json()
        with open(fixtures / FFPP_FAKE, "rb") as handle:
            plain = client.post("/api/predict", files={"file": ("fake.mp4", handle)}).json()
        page = client.get("/").text
    assert "explain" not in plain and plain["p_fake"] == pytest.approx(explained["p_fake"], abs=1e-6)
    maps = explained["explain"]["maps"]
    assert len(maps) == len(explained["crops"]) == explained["frames_used"]
    for url in maps:
        assert url.startswith("data:image/png;base64,")
        assert png_size(base64.b64decode(url.split(",", 1)[1])) == (48, 48)
    assert "explain=1" in page and 'canvas.className = "map"' in page


def test_the_page_draws_a_map_under_each_crop_in_headless_chromium(trained_run, fixtures, tmp_path):
    import threading
    import time

    import uvicorn
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    from support import chromium_driver, free_port

    from dfdtrain.inference.service import create_app

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(trained_run, faces="none"), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not server.started and thread.is_alive() and time.time() < deadline:
        time.sleep(0.1)
    assert server.started
    driver = chromium_driver()
    try:
        driver.get(f"http://127.0.0.1:{port}/")
        driver.find_element(By.ID, "file").send_keys(str(fixtures / FFPP_FAKE))
        WebDriverWait(driver, 120).until(lambda page: page.find_element(By.TAG_NAME, "body")
                                         .get_attribute("data-state") in ("done", "error"))
        assert driver.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "done"
        WebDriverWait(driver, 10).until(
            lambda page: len(page.find_elements(By.CSS_SELECTOR, "#crops canvas.map[data-drawn='1']")) == 4)
        # each figure: the crop, the map drawn under it (every pixel painted), the caption
        layouts = driver.execute_script(
            "return [...document.querySelectorAll('#crops figure')].map((figure) => {"
            "  const canvas = figure.querySelector('canvas.map'); const d = canvas.getContext('2d')"
            "    .getImageData(0, 0, canvas.width, canvas.height).data; let painted = 0;"
            "  for (let i = 3; i < d.length; i += 4) if (d[i] > 0) painted++;"
            "  return [[...figure.children].map((child) => child.tagName).join(' '), painted]; });")
        assert layouts == [["IMG CANVAS FIGCAPTION", 96 * 96]] * 4, layouts
        assert "Grad-CAM" in driver.find_element(By.ID, "maps-note").text
        driver.save_screenshot(str(tmp_path / "page.png"))
    finally:
        driver.quit()
        server.should_exit = True
        thread.join(timeout=30)
