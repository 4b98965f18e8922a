"""The page ``dfdtrain serve`` shows at ``/``: pick or drop a video, see the verdict, P(fake), the per-frame scores
over time and the crops the model saw (each with a map under it of what drove the fake score), every score on the
verdict's scale (calibrated; raw values labelled raw).
Self-contained (no CDN, no build step): the service may run offline."""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>dfdtrain detector</title>
<style>
  body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; background: #f4f5f7; color: #1d2330; }
  main { max-width: 880px; margin: 0 auto; padding: 24px; }
  h1 { font-size: 22px; margin: 0 0 4px; }
  #model { color: #5b6475; font-size: 13px; margin-bottom: 18px; }
  #drop { display: block; border: 2px dashed #9aa3b5; border-radius: 10px; padding: 28px; text-align: center; background: #fff;
          cursor: pointer; }
  #drop.over { border-color: #2f6fed; background: #eef3ff; }
  #drop p { margin: 0 0 10px; }
  #status { margin: 14px 0; color: #5b6475; min-height: 20px; }
  #error { display: none; background: #fdecec; border: 1px solid #e5a1a1; color: #8a1f1f; padding: 12px 14px;
           border-radius: 8px; margin: 12px 0; }
  #result { display: none; background: #fff; border-radius: 10px; padding: 18px 20px; box-shadow: 0 1px 3px #0002; }
  #verdict { font-size: 34px; font-weight: 700; letter-spacing: 1px; }
  #verdict.fake { color: #c62828; }
  #verdict.real { color: #1b7f3b; }
  #pfake { font-size: 18px; margin: 4px 0 2px; }
  #details { color: #5b6475; font-size: 13px; margin-bottom: 12px; }
  canvas { width: 100%; max-width: 820px; background: #fff; border: 1px solid #e1e4ea; border-radius: 6px; }
  h2 { font-size: 15px; margin: 16px 0 8px; }
  #crops { display: flex; flex-wrap: wrap; gap: 6px; }
  #crops figure { margin: 0; text-align: center; font-size: 11px; color: #5b6475; }
  #crops img { width: 96px; height: 96px; object-fit: cover; border-radius: 4px; display: block; }
  #crops canvas.map { width: 96px; height: 96px; max-width: none; border: 0; border-radius: 4px; display: block;
                      margin-top: 3px; }
  #maps-note { color: #5b6475; font-size: 12px; margin: 0 0 8px; }
</style>
</head>
<body data-state="idle">
<main>
  <h1>dfdtrain &mdash; deepfake video detector</h1>
  <div id="model">loading the model&hellip;</div>
  <label id="drop" for="file">
    <p><strong>Drop a video here</strong> or choose a file</p>
    <input id="file" type="file" accept="video/*,.mp4,.avi,.mov,.mkv,.webm">
  </label>
  <div id="status"></div>
  <div id="error" role="alert"></div>
  <section id="result">
    <div id="verdict"></div>
    <div id="pfake"></div>
    <div id="details"></div>
    <h2 id="scores-title">Scores over the clip</h2>
    <canvas id="scores" width="820" height="240"></canvas>
    <h2>What the model saw</h2>
    <p id="maps-note"></p>
    <div id="crops"></div>
  </section>
</main>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
let model = null;

async function loadModel() {
  try {
    const response = await fetch("/api/model");
    model = await response.json();
    const clip = model.clip;
    const architecture = model.head === "none" ? `clip backbone ${model.backbone}`
      : `${model.backbone} + ${model.head} head`;
    $("model").textContent = `${model.name || "detector"}: ${architecture}, ` +
      `${clip.sampler.num_frames} frames at ${clip.image_size} px (${clip.crop} crop), threshold ` +
      `${model.threshold.toFixed(3)}, temperature ${model.calibration.temperature.toPrecision(3)}; ` +
      `uploads up to ${model.limits.max_mb} MB`;
  } catch (problem) {
    $("model").textContent = "could not read /api/model: " + problem;
  }
}

function showError(message) {
  document.body.dataset.state = "error";
  $("result").style.display = "none";
  $("error").style.display = "block";
  $("error").textContent = message;
  $("status").textContent = "";
}

function drawScores(scores, threshold, kind, scale) {
  const canvas = $("scores"), context = canvas.getContext("2d");
  // what is plotted, readable from the DOM: the values and the threshold line, both on the verdict's scale
  canvas.dataset.values = JSON.stringify(scores);
  canvas.dataset.threshold = String(threshold);
  canvas.dataset.scale = scale;
  const width = canvas.width, height = canvas.height;
  const left = 44, right = 12, top = 12, bottom = 34;
  const x = (i) => left + (scores.length > 1 ? i / (scores.length - 1) : 0.5) * (width - left - right);
  const y = (v) => top + (1 - v) * (height - top - bottom);
  context.clearRect(0, 0, width, height);
  context.font = "12px sans-serif";
  context.strokeStyle = "#e1e4ea";
  context.fillStyle = "#5b6475";
  for (const v of [0, 0.25, 0.5, 0.75, 1]) {
    context.beginPath(); context.moveTo(left, y(v)); context.lineTo(width - right, y(v)); context.stroke();
    context.fillText(v.toFixed(2), 6, y(v) + 4);
  }
  context.fillText(`${kind} 1..${scores.length} (P(fake) on the verdict's ${scale} scale; dashed: the threshold)`,
                   left, height - 10);
  context.setLineDash([6, 4]); context.strokeStyle = "#444";
  context.beginPath(); context.moveTo(left, y(threshold)); context.lineTo(width - right, y(threshold)); context.stroke();
  context.setLineDash([]);
  context.strokeStyle = "#2f6fed"; context.lineWidth = 2; context.beginPath();
  scores.forEach((v, i) => (i ? context.lineTo(x(i), y(v)) : context.moveTo(x(i), y(v))));
  context.stroke();
  scores.forEach((v, i) => {
    context.fillStyle = v >= threshold ? "#c62828" : "#1b7f3b";
    context.beginPath(); context.arc(x(i), y(v), 4, 0, 2 * Math.PI); context.fill();
  });
  context.lineWidth = 1;
}

function showResult(result) {
  // frame, step, token, segment, clip: on the verdict's scale (the raw ones are *_scores_raw)
  const scales = result.scales || {};
  const kind = Object.keys(scales).find((key) => key.endsWith("_scores"))
    || Object.keys(result).find((key) => key.endsWith("_scores"));
  const scores = result[kind] || [], raw = result[kind + "_raw"] || [];
  const scale = scales[kind] || scales.p_fake || "calibrated";
  $("error").style.display = "none";
  $("result").style.display = "block";
  $("verdict").textContent = result.verdict;
  $("verdict").className = result.verdict === "FAKE" ? "fake" : "real";
  const how = (scales.p_fake || scale) === "raw" ? "raw: no calibration fitted"
    : `${scales.p_fake || scale}; raw ${result.p_fake_raw.toFixed(3)}`;
  $("pfake").textContent = `P(fake) = ${result.p_fake.toFixed(3)} (${how}), threshold ${result.threshold.toFixed(3)}`;
  const faces = result.faces_found === null ? "no face detection" : `faces in ${result.faces_found} frames`;
  const stages = Object.entries(result.stage_seconds || {}).filter(([stage]) => stage !== "total")
    .map(([stage, seconds]) => `${stage} ${seconds.toFixed(2)}`).join(", ");
  $("details").textContent = `${result.path}: ${result.frames_used} frames used, ${faces}, ` +
    `${result.video.width}x${result.video.height} ${result.video.codec}, ${result.seconds.toFixed(2)} s` +
    (stages ? ` (${stages})` : "");
  $("scores-title").textContent = kind === "frame_scores" ? "Per-frame scores over the clip"
    : kind === "step_scores" ? "Recurrent step scores over the clip (cumulative over frames 1..t)"
    : kind === "segment_scores" ? "Clip-backbone segment scores (each frame shows its stretch of frames)"
    : kind === "clip_scores" ? "The clip's score at every frame (the model scores the clip as a whole)"
    : "Frame-token scores over the clip";
  drawScores(scores, result.threshold, kind ? kind.replace("_", " ") : "scores", scale);
  const explained = result.explain || {};
  $("maps-note").textContent = explained.note ? `No evidence maps: ${explained.note}`
    : explained.maps ? `Under each crop: where the evidence is (${explained.method} of the fake score; red: most)`
    : "";
  const crops = $("crops");
  crops.replaceChildren();
  (result.crops || []).forEach((url, i) => {
    const figure = document.createElement("figure");
    const image = document.createElement("img");
    image.src = url; image.alt = `crop ${i + 1}`;
    const caption = document.createElement("figcaption");
    caption.textContent = scores[i] === undefined ? `${i + 1}` : `${i + 1}: ${scores[i].toFixed(2)}`;  // as plotted
    if (raw[i] !== undefined) figure.title = `${scale} ${scores[i].toFixed(3)}, raw ${raw[i].toFixed(3)}`;
    const map = ((result.explain || {}).maps || [])[i];  // the evidence map over this crop, drawn under it
    if (map) {
      const canvas = document.createElement("canvas");
      canvas.className = "map"; canvas.width = 96; canvas.height = 96;
      canvas.title = `${result.explain.method} on ${result.explain.layer}: what drove the fake score`;
      const picture = new Image();
      picture.onload = () => {
        canvas.getContext("2d").drawImage(picture, 0, 0, canvas.width, canvas.height);
        canvas.dataset.drawn = "1";
      };
      picture.src = map;
      figure.append(image, canvas, caption);
    } else {
      figure.append(image, caption);
    }
    crops.append(figure);
  });
  $("status").textContent = "";
  document.body.dataset.state = "done";
}

async function analyse(file) {
  if (!file) return;
  document.body.dataset.state = "busy";
  $("error").style.display = "none";
  $("status").textContent = `Analysing ${file.name} (${(file.size / 1048576).toFixed(1)} MB)\\u2026`;
  if (model && file.size > model.limits.max_mb * 1048576) {
    showError(`${file.name}: too large (more than ${model.limits.max_mb} MB)`);
    return;
  }
  const form = new FormData();
  form.append("file", file);
  try {
    const response = await fetch("/api/predict?crops=1&explain=1", { method: "POST", body: form });
    const data = await response.json().catch(() => ({ error: response.statusText }));
    if (!response.ok) showError(`Could not analyse ${file.name}: ${data.error || response.status}`);
    else showResult(data);
  } catch (problem) {
    showError(`Could not reach the service: ${problem}`);
  }
}

$("file").addEventListener("change", (event) => analyse(event.target.files[0]));
const drop = $("drop");
["dragenter", "dragover"].forEach((name) => drop.addEventListener(name, (event) => {
  event.preventDefault(); drop.classList.add("over");
}));
["dragleave", "drop"].forEach((name) => drop.addEventListener(name, (event) => {
  event.preventDefault(); drop.classList.remove("over");
}));
drop.addEventListener("drop", (event) => analyse(event.dataTransfer.files[0]));
loadModel();
</script>
</body>
</html>
"""
