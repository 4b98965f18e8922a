"""RunLogger with the real wandb in offline mode: metrics.jsonl, the offline run read back, fallbacks, no leaks.

The offline run is read back from its transaction log (``wandb/offline-run-*/run-<id>.wandb``): a LevelDB
log of ``wandb_internal_pb2.Record`` protobufs. wandb 0.31 moved its own reader into wandb-core (Go), so
``read_transaction_log`` below parses the framing itself.
"""

import importlib.util
import json
import logging
import os
import socket
import struct
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dfdtrain.training.run_logger import RunLogger, flatten, system_values
from dfdtrain.core.errors import DfdError
from dfdtrain.core.fileio import read_json, read_jsonl

# wandb is an extra (dfdtrain[wandb]): without it only the tests that need no W&B run.
needs_wandb = pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="wandb is not installed")

FAKE_API_KEY = "dfdtrainfakekey" + "0123456789" * 2 + "abcde"  # 40 characters, the shape wandb accepts
CONFIG = {"model": {"backbone": "mobilenetv2_100", "head": "gru"}, "optim": {"lr": 3e-4}, "seed": 7}
TRAIN_STEPS = {step: 1.0 / step for step in range(1, 301)}  # step -> loss; enough rows to span log blocks
LAST_STEP = 300
EVAL_VALUES = {"val": {"video": {"mean": {"auc": np.float32(0.875)}, "accuracy": torch.tensor(0.75)},
                       "loss": 0.4}}
SUMMARY = {"best": {"val_video_auc": 0.875, "epoch": 1}}


# -- reading an offline run back ----------------------------------------------------------------------------

LOG_BLOCK_SIZE = 32768  # LevelDB log format: 32 KiB blocks of chunks, each with a 7-byte header
CHUNK_FULL, CHUNK_FIRST, CHUNK_MIDDLE, CHUNK_LAST = 1, 2, 3, 4


def read_transaction_log(path):
    """The Records of a ``.wandb`` file, in order.

    Layout: a 7-byte file header (":W&B", magic 0xBEE1, version 0), then LevelDB log chunks: crc32c
    (uint32), length (uint16), type (uint8), data; a record is one FULL chunk or FIRST, MIDDLE..., LAST;
    a block tail shorter than a chunk header is zero padding. The crc is not checked (no crc32c in stdlib).
    """
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:7])
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0), (ident, magic, version)
    records, pending, position = [], b"", 7
    while position + 7 <= len(data):
        left_in_block = LOG_BLOCK_SIZE - position % LOG_BLOCK_SIZE
        if left_in_block < 7:
            position += left_in_block
            continue
        _crc, length, chunk_type = struct.unpack("<IHB", data[position:position + 7])
        if chunk_type == 0:  # zero padding up to the end of the block
            position += left_in_block
            continue
        chunk = data[position + 7:position + 7 + length]
        position += 7 + length
        if chunk_type in (CHUNK_FULL, CHUNK_FIRST):
            pending = chunk
        else:
            pending += chunk
        if chunk_type in (CHUNK_FULL, CHUNK_LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def _item_key(item):
    return item.key or ".".join(item.nested_key)  # our "/" keys arrive as a one-element nested_key


def _history_value(item):
    kind = item.WhichOneof("value")  # newer writers use typed fields, older ones value_json
    if kind == "none":
        return None
    if kind == "json":
        return json.loads(item.json)
    if kind is not None:
        return getattr(item, kind)
    return json.loads(item.value_json)


def read_offline_run(run_dir):
    """(run record, {step: {key: value}}, config {key: value}, summary {key: value}) of the offline run."""
    [run_folder] = Path(run_dir).glob("wandb/offline-run-*")
    [log_path] = run_folder.glob("run-*.wandb")
    run, history, config, summary = None, {}, {}, {}
    for record in read_transaction_log(log_path):
        record_type = record.WhichOneof("record_type")
        if record_type == "run":
            run = record.run
            for item in run.config.update:
                config[_item_key(item)] = json.loads(item.value_json)
        elif record_type == "config":
            for item in record.config.update:
                config[_item_key(item)] = json.loads(item.value_json)
        elif record_type == "history":
            row = history.setdefault(record.history.step.num, {})
            row.update({_item_key(item): _history_value(item) for item in record.history.item})
        elif record_type == "summary":
            for item in record.summary.update:
                summary[_item_key(item)] = json.loads(item.value_json)
            for item in record.summary.remove:
                summary.pop(_item_key(item), None)
    return run, history, config, summary


def files_containing(folder, text):
    needle = text.encode()
    return [str(path) for path in Path(folder).rglob("*") if path.is_file() and needle in path.read_bytes()]


def our_warnings(caplog):
    return [record for record in caplog.records
            if record.name == "dfdtrain.training.run_logger" and record.levelno == logging.WARNING]


@pytest.fixture
def isolated_home(tmp_path, monkeypatch):
    """An empty HOME, no W&B credentials and no netrc: the machine of a user who never ran `wandb login`."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("NETRC", str(home / ".netrc"))  # absent file
    for variable in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL", "WANDB_MODE",
                     "WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.delenv(variable, raising=False)
    return home


# -- one offline run, shared by the read-back tests ---------------------------------------------------------

@pytest.fixture(scope="module")
def offline_run(tmp_path_factory):
    """A complete offline run (3 train steps, 1 eval, a summary) made with an empty HOME and a fake key set."""
    home = tmp_path_factory.mktemp("home")
    run_dir = tmp_path_factory.mktemp("offline") / "run"
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("HOME", str(home))
        monkeypatch.setenv("WANDB_API_KEY", FAKE_API_KEY)
        monkeypatch.setenv("WANDB_DIR", str(home / "user-wandb-dir"))  # the run directory must win
        with RunLogger(run_dir, rank=0, config_dict=CONFIG, wandb_mode="offline", run_name="offline-test",
                       tags=("test", "cpu"), group="unit", job_type="train") as run_logger:
            for step, loss in TRAIN_STEPS.items():
                run_logger.log(step, {"loss": np.float64(loss), "lr": 3e-4, "samples_per_s": 12.5}, epoch=1)
            run_logger.log(LAST_STEP, EVAL_VALUES, kind="eval", epoch=1)
            run_logger.summary({"last_step": LAST_STEP})
            run_logger.close(summary=SUMMARY)
        assert os.environ["WANDB_DIR"] == str(home / "user-wandb-dir"), "close() restores the environment"
    return run_dir, home


@needs_wandb
def test_metrics_jsonl_keeps_nested_values(offline_run):
    run_dir, _ = offline_run
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [(row["kind"], row["step"], row["epoch"]) for row in rows] == [
        *(("train", step, 1) for step in TRAIN_STEPS), ("eval", LAST_STEP, 1)]
    assert [row["loss"] for row in rows[:-1]] == list(TRAIN_STEPS.values())
    assert all(abs(row["time"] - time.time()) < 600 for row in rows)
    assert rows[-1]["val"] == {"video": {"mean": {"auc": 0.875}, "accuracy": 0.75}, "loss": 0.4}
    assert read_json(run_dir / "summary.json") == {"last_step": LAST_STEP, **SUMMARY}


@needs_wandb
def test_offline_run_history_config_and_summary(offline_run):
    run_dir, _ = offline_run
    run, history, config, summary = read_offline_run(run_dir)

    assert (run.project, run.display_name, run.run_group, run.job_type) == ("dfdtrain", "offline-test", "unit",
                                                                             "train")
    assert list(run.tags) == ["test", "cpu"]
    assert config["model"] == CONFIG["model"] and config["optim"] == CONFIG["optim"] and config["seed"] == 7

    [log_path] = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    assert log_path.stat().st_size > 2 * LOG_BLOCK_SIZE, "the reader must have crossed block boundaries"
    assert sorted(history) == list(TRAIN_STEPS)
    for step, loss in TRAIN_STEPS.items():
        assert history[step]["loss"] == loss and history[step]["_step"] == step
        assert history[step]["epoch"] == 1 and history[step]["samples_per_s"] == 12.5
    # the eval logged at the last train step joins that step's row, under flattened keys
    assert history[LAST_STEP]["val/video/mean/auc"] == 0.875
    assert history[LAST_STEP]["val/video/accuracy"] == 0.75
    assert history[LAST_STEP]["val/loss"] == 0.4
    assert "val/loss" not in history[LAST_STEP - 1]

    assert summary["best/val_video_auc"] == 0.875 and summary["best/epoch"] == 1
    assert summary["last_step"] == LAST_STEP
    assert summary["loss"] == TRAIN_STEPS[LAST_STEP]  # wandb keeps the last logged value too


@needs_wandb
def test_offline_run_stays_inside_run_dir(offline_run):
    run_dir, home = offline_run
    assert list(home.iterdir()) == [], "nothing may be written to the home directory"
    assert sorted(path.name for path in run_dir.iterdir() if path.name.startswith("wandb")) == [
        "wandb", "wandb-cache"]  # wandb-config, -data, -artifacts are only created when used
    assert files_containing(run_dir, FAKE_API_KEY) == []


# -- online mode fallbacks ----------------------------------------------------------------------------------

@needs_wandb
def test_online_without_credentials_falls_back_to_offline(tmp_path, isolated_home, caplog):
    run_dir = tmp_path / "run"
    started = time.monotonic()
    with caplog.at_level(logging.WARNING), RunLogger(run_dir, 0, CONFIG, wandb_mode="online") as run_logger:
        assert run_logger.wandb_mode == "offline"
        run_logger.log(1, {"loss": 0.5})
    assert time.monotonic() - started < 30
    [warning] = our_warnings(caplog)
    assert "no API key" in warning.getMessage() and "offline" in warning.getMessage()
    _, history, config, _ = read_offline_run(run_dir)
    assert history[1]["loss"] == 0.5 and config["seed"] == 7
    assert list(isolated_home.iterdir()) == []


@needs_wandb
def test_online_with_unreachable_server_falls_back_and_never_writes_the_key(tmp_path, isolated_home, caplog,
                                                                          monkeypatch):
    # A bound but not listening port: every connection is refused, so wandb retries until init_timeout.
    with socket.socket() as closed_port:
        closed_port.bind(("127.0.0.1", 0))
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{closed_port.getsockname()[1]}")
        monkeypatch.setenv("WANDB_API_KEY", FAKE_API_KEY)
        run_dir = tmp_path / "run"
        started = time.monotonic()
        with caplog.at_level(logging.WARNING), RunLogger(run_dir, 0, CONFIG, wandb_mode="online",
                                                         online_init_timeout_s=3) as run_logger:
            assert run_logger.wandb_mode == "offline"
            run_logger.log(1, {"loss": 0.5})
            run_logger.summary({"best_loss": 0.5})
        assert time.monotonic() - started < 30
    [warning] = our_warnings(caplog)
    assert "online start failed" in warning.getMessage()
    _, history, _, summary = read_offline_run(run_dir)
    assert history[1]["loss"] == 0.5 and summary["best_loss"] == 0.5
    assert files_containing(run_dir, FAKE_API_KEY) == []
    assert list(isolated_home.iterdir()) == []


# -- ranks, console, modes ----------------------------------------------------------------------------------

def test_rank_one_writes_and_prints_nothing(tmp_path, isolated_home, capsys):
    run_dir = tmp_path / "run"
    with RunLogger(run_dir, rank=1, config_dict=CONFIG, wandb_mode="offline") as run_logger:
        bar = run_logger.progress(total=3, description="epoch 1")
        assert bar.disable
        bar.close()
        run_logger.log(1, {"loss": 0.5})
        run_logger.print_eval_table(1, "auc 0.9")
        run_logger.close(summary={"best": 1})
        assert run_logger.wandb_run is None
    assert not run_dir.exists()
    assert "WANDB_DIR" not in os.environ
    assert capsys.readouterr() == ("", "")


def test_disabled_mode_writes_jsonl_and_prints_on_rank_zero(tmp_path, capsys):
    with RunLogger(tmp_path, rank=0, config_dict=CONFIG) as run_logger:
        bar = run_logger.progress(total=2, description="epoch 1")
        bar.set_postfix(loss="0.5000", lr="3.00e-04", samples_s="12.5")
        bar.update(2)
        bar.close()
        run_logger.print_eval_table(1, "metric  video\nauc     0.875\n")
        run_logger.log(2, {"loss": torch.tensor(0.5)})
    assert run_logger.wandb_run is None and not (tmp_path / "wandb").exists()
    assert read_jsonl(tmp_path / "metrics.jsonl")[0]["loss"] == 0.5
    captured = capsys.readouterr()
    assert "== evaluation, epoch 1 ==\nmetric  video\nauc     0.875\n" in captured.out
    assert "epoch 1" in captured.err and "loss=0.5000" in captured.err  # tqdm draws on stderr


def test_without_wandb_installed(tmp_path, isolated_home, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # makes `import wandb` fail as if it were not installed
    with pytest.raises(DfdError, match=r"wandb is not installed: pip install 'dfdtrain\[wandb\]'"):
        RunLogger(tmp_path / "offline", 0, CONFIG, wandb_mode="offline")
    assert "WANDB_DIR" not in os.environ, "a failed start restores the environment"
    with RunLogger(tmp_path / "disabled", 0, CONFIG, wandb_mode="disabled") as run_logger:
        run_logger.log(1, {"loss": 0.5})
    assert (tmp_path / "disabled" / "metrics.jsonl").exists()


def test_bad_arguments(tmp_path):
    with pytest.raises(DfdError, match="wandb mode 'cloud'"):
        RunLogger(tmp_path, 0, CONFIG, wandb_mode="cloud")
    with RunLogger(tmp_path, 0, CONFIG) as run_logger:
        with pytest.raises(ValueError, match="reserved"):
            run_logger.log(1, {"step": 3})
        with pytest.raises(TypeError, match="cannot log a value of type object"):
            run_logger.log(1, {"thing": object()})


def test_flatten_and_system_values():
    assert flatten({"val": {"video": {"mean": {"auc": 1.0}}}, "loss": 2}) == {"val/video/mean/auc": 1.0, "loss": 2}
    assert system_values("cpu") == {}
    if torch.cuda.is_available():
        assert system_values("cuda")["gpu_max_memory_mb"] >= 0


def test_wandb_mode_from_the_environment_wins_over_the_config(monkeypatch):
    """WANDB_MODE, as W&B users set it, decides over logger.wandb.mode (wandb's older names too); an unknown value
    is one line naming the variable."""
    from dfdtrain.config import wandb_mode

    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert wandb_mode("disabled") == "disabled" and wandb_mode("online") == "online"
    for value, mode in (("offline", "offline"), ("dryrun", "offline"), ("OFFLINE ", "offline"),
                        ("disabled", "disabled"), ("run", "online"), ("", "disabled")):
        monkeypatch.setenv("WANDB_MODE", value)
        assert wandb_mode("disabled") == mode, value
    monkeypatch.setenv("WANDB_MODE", "cloud")
    with pytest.raises(DfdError, match=r"^WANDB_MODE='cloud': expected online, offline or disabled"):
        wandb_mode("disabled")
