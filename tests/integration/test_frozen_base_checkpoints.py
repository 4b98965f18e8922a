"""Frozen-base runs (finetune.method lora / layernorm) for real, through `dfdtrain train` on synth shards with a
small untrained ViT (vit_tiny, 32 px): checkpoints hold only the trained tensors (a few % of a full one), the
model rebuilt from them and the recorded base scores as the run did, a wrong or missing base is one line, a run
resumes from them, and export writes bundles that need no base (merged LoRA equal to the unmerged model)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from support import environment

VIT = "vit_tiny_patch16_224"
SIZE, FRAMES = 32, 2
SEED = 7


def vit_command(run_dir, shards, *extra):
    """`dfdtrain train` of vit_tiny + a small mean head, 1 epoch of 8 videos (DDP engine, 1 process)."""
    return [sys.executable, "-m", "dfdtrain", "train", "--quiet", f"run_dir={run_dir}", "train.engine=ddp",
            f"data.train_shards={shards}/train-*.tar", f"data.val_shards={shards}/val-*.tar",
            f"model.backbone={VIT}", "model.pretrained=false", "model.head=mean", "model.head_options={hidden: [8]}",
            f"clip.sampler.num_frames={FRAMES}", f"clip.image_size={SIZE}", "clip.crop=center", "data.decoder=pyav",
            "data.batch_size=2", "data.num_workers=0", "data.epoch_samples=8", "train.epochs=1", "train.log_every=1",
            "optim.lr=0.01", f"seed={SEED}", *extra]


def vit_train(run_dir, shards, *extra):
    result = subprocess.run(vit_command(run_dir, shards, *extra), capture_output=True, text=True, timeout=600,
                            env=environment())
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def weight_bytes(checkpoint):
    """Bytes of a checkpoint folder's files but the RNG states and detector.json."""
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(checkpoint)
               for name in names if not name.startswith("rng-") and not name.endswith(".json"))


def val_losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [row["val"]["loss"] for row in rows if row["kind"] == "eval"]


def train_losses(run_dir, missing=None):
    if missing is not None and not (run_dir / "metrics.jsonl").is_file():
        return missing
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.endswith("}")]
    return {row["step"]: row["loss"] for row in rows if row["kind"] == "train"}


def clips(seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(2, FRAMES, 3, SIZE, SIZE, generator=generator), torch.ones(2, FRAMES, dtype=torch.bool)


def outputs(model):
    with torch.no_grad():
        return model(*clips())[0]


def vit_weights_file(path, seed):
    """A timm vit_tiny (32 px, no classifier) state dict of seed ``seed`` as safetensors: a pretrained_file."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = timm.create_model(VIT, pretrained=False, num_classes=0, img_size=SIZE)
    save_file({name: value.contiguous() for name, value in model.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, small_shards):
    run_dir = tmp_path_factory.mktemp("lora") / "run"
    vit_train(run_dir, small_shards, "finetune.method=lora", "finetune.lora_rank=2", "train.epochs=2")
    return run_dir


def test_lora_checkpoints_are_small_and_rebuild_to_the_runs_scores(lora_run, small_shards, tmp_path):
    from dfdtrain.evaluation.evaluate import score_shards
    from dfdtrain.evaluation.scoring import records_loss
    from dfdtrain.models.bundle import load_detector

    last = lora_run / "checkpoints" / "last"
    settings = json.loads((last / "detector.json").read_text())
    assert settings["finetune"]["method"] == "lora" and settings["base"]["init"] == "random"
    assert settings["base"]["seed"] == SEED and settings["base"]["model"] == VIT
    weights = torch.load(last / "checkpoint.pt", weights_only=True)["model"]
    assert all(name.startswith("head.") or name.endswith((".lora_A", ".lora_B"))
               for name in weights)

    # the same model trained with finetune.method full: every tensor, with its optimizer state
    full = tmp_path / "full"
    vit_train(full, small_shards, "train.epochs=1")
    small, whole = weight_bytes(last), weight_bytes(full / "checkpoints" / "last")
    print(f"lora rank 2 checkpoint {small} bytes, full {whole} bytes: {small / whole:.2%}")
    assert small < 0.05 * whole

    # the rebuilt model scores the validation videos as the run's last validation did
    scored = score_shards(last, f"{small_shards}/val-*.tar", batch_size=2, workers=0, verify=False)
    assert records_loss(scored[2]) == pytest.approx(val_losses(lora_run)[-1], rel=1e-6, abs=1e-9)
    model, loaded = load_detector(lora_run, base_weights=None)
    assert loaded.base.needed and outputs(model).isfinite().all()


def test_a_wrong_or_missing_base_is_one_line(lora_run, tmp_path):
    from dfdtrain.core.errors import DfdError
    from dfdtrain.models.bundle import load_detector

    other = tmp_path / "other-seed"
    shutil.copytree(lora_run / "checkpoints" / "last", other)
    settings = json.loads((other / "detector.json").read_text())
    settings["base"]["seed"] = SEED + 1  # the base a run of another seed would have had
    (other / "detector.json").write_text(json.dumps(settings))
    with pytest.raises(DfdError) as error:
        load_detector(other)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{other}: was trained on the base {VIT} (random init, "
                                                      f"seed {SEED + 1})")
    assert "differs" in message and "--base-weights" in message

    wrong_file = vit_weights_file(tmp_path / "another.safetensors", seed=99)
    with pytest.raises(DfdError, match=r"^.*differs \(sha256 [0-9a-f]{16}, 150 tensors\); pass --base-weights"):
        load_detector(lora_run / "checkpoints" / "last", base_weights=wrong_file)
    with pytest.raises(DfdError, match=r"^--base-weights .*nothing\.safetensors: no such file$"):
        load_detector(lora_run, base_weights=tmp_path / "nothing.safetensors")


def test_a_lora_run_killed_mid_epoch_resumes_as_the_uninterrupted_run(lora_run, small_shards, tmp_path):
    """The 2-epoch run again with a checkpoint every step, SIGKILLed in epoch 2 and resumed from checkpoints/last:
    the same losses as the uninterrupted run (lora_run)."""
    run_dir = tmp_path / "resumed"
    settings = ("finetune.method=lora", "finetune.lora_rank=2", "train.epochs=2", "train.checkpoint_every=1")
    command = vit_command(run_dir, small_shards, *settings)
    with open(tmp_path / "killed.stderr", "w") as errors:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=errors, env=environment(),
                                   start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None and max(train_losses(run_dir, missing={}), default=0) < 6:
        time.sleep(0.02)
    assert process.poll() is None, (tmp_path / "killed.stderr").read_text()[-3000:]
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    resumed = vit_train(run_dir, small_shards, *settings, "--resume", "must")
    assert "resuming" in resumed.stdout and "from epoch 1, step " in resumed.stdout
    assert train_losses(run_dir) == train_losses(lora_run) and val_losses(run_dir) == val_losses(lora_run)

    # resuming on another base (another seed) is refused with one line
    refused = subprocess.run(vit_command(run_dir, small_shards, *settings, "train.epochs=3", f"seed={SEED + 1}",
                                         "--resume", "must"), capture_output=True, text=True, timeout=600,
                             env=environment())
    assert refused.returncode != 0
    assert "cannot resume: it holds the base" in refused.stderr, refused.stderr[-2000:]


def test_export_writes_bundles_that_need_no_base_and_merged_lora_equals_unmerged(lora_run, tmp_path):
    from dfdtrain.models.bundle import export_bundle, load_detector
    from dfdtrain.models.lora import LoRALinear

    unmerged, _ = load_detector(lora_run)
    expected = outputs(unmerged)
    plain, merged = tmp_path / "bundle", tmp_path / "merged"
    export_bundle(lora_run, plain)  # as `dfdtrain export` without --merge
    result = subprocess.run([sys.executable, "-m", "dfdtrain", "export", "--checkpoint", str(lora_run), "--out",
                             str(merged), "--merge", "--torchscript", "--onnx"], capture_output=True, text=True,
                            timeout=600, env=environment())
    assert result.returncode == 0, result.stderr[-2000:]
    for out in (plain, merged):
        assert "base" not in json.loads((out / "detector.json").read_text())  # complete: no base needed

    bundle, settings = load_detector(plain)
    assert settings.finetune.method == "lora" and torch.equal(outputs(bundle), expected)
    model, settings = load_detector(merged)
    assert settings.finetune.method == "full" and "finetune" not in json.loads((merged / "detector.json").read_text())
    assert not any(isinstance(layer, LoRALinear) for layer in model.modules())
    difference = float((outputs(model) - expected).abs().max())
    print(f"merged - unmerged: {difference:.3g}")
    assert difference <= 1e-5

    scripted = torch.jit.load(str(merged / "model.ts"))
    with torch.no_grad():
        assert float((scripted(*clips())[0] - expected).abs().max()) <= 1e-5
    import onnxruntime

    session = onnxruntime.InferenceSession(str(merged / "model.onnx"), providers=["CPUExecutionProvider"])
    frames, mask = clips()
    got = session.run(None, {"frames": frames.numpy(), "mask": mask.numpy()})[0]
    assert float(abs(got - expected.numpy()).max()) <= 1e-5


def test_deepspeed_layernorm_run_on_a_pretrained_file(small_shards, tmp_path):
    """DeepSpeed's exclude_frozen_parameters path: a layernorm run on a local pretrained_file stores the
    LayerNorms, the head and nothing else; it resumes; it loads from the recorded file or from --base-weights,
    and a missing file is one line."""
    from dfdtrain.core.errors import DfdError
    from dfdtrain.models.bundle import load_detector

    base = vit_weights_file(tmp_path / "base.safetensors", seed=3)
    run_dir = tmp_path / "run"
    settings = ("train.engine=deepspeed", "train.zero_stage=1", "finetune.method=layernorm",
                f"model.pretrained_file={base}")
    vit_train(run_dir, small_shards, *settings)
    last = run_dir / "checkpoints" / "last"
    weights = torch.load(last / "mp_rank_00_model_states.pt", weights_only=False)["module"]
    model, _ = load_detector(run_dir)
    norms = {name for name, layer in model.named_modules() if isinstance(layer, torch.nn.LayerNorm)}
    assert set(weights) == {f"{norm}.{kind}" for norm in norms for kind in ("weight", "bias")} | \
        {name for name in model.state_dict() if name.startswith("head.")}
    print(f"layernorm checkpoint {weight_bytes(last)} bytes")
    recorded = json.loads((last / "detector.json").read_text())["base"]
    assert recorded["init"] == "file" and recorded["file"] == str(base)
    expected = outputs(model)

    resumed = vit_train(run_dir, small_shards, *settings, "train.epochs=2", "--resume", "must")
    assert "resuming" in resumed.stdout and len(val_losses(run_dir)) == 2

    moved = tmp_path / "elsewhere.safetensors"
    base.rename(moved)
    with pytest.raises(DfdError, match=r"holds only the trained tensors; its base weights .*base\.safetensors "
                                       r"\(named in .*detector\.json\) are not there: pass --base-weights PATH"):
        load_detector(run_dir)
    model, _ = load_detector(run_dir, base_weights=moved)
    assert not torch.equal(outputs(model), expected)  # the resumed run trained on
    assert outputs(model).isfinite().all()
    video = sorted((small_shards.parent / "data").rglob("*.mp4"))[0]
    result = subprocess.run([sys.executable, "-m", "dfdtrain", "predict", "--quiet", "--json", "--faces", "none",
                             "--checkpoint", str(run_dir), "--base-weights", str(moved), str(video)],
                            capture_output=True, text=True, timeout=600, env=environment())
    assert result.returncode == 0, result.stderr[-2000:]
    assert 0 <= json.loads(result.stdout)[0]["p_fake"] <= 1
