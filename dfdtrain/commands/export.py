"""dfdtrain export: a self-contained bundle of a trained detector, optionally also as ONNX and/or TorchScript.

The ONNX / TorchScript graphs take frames [B, T, 3, S, S] (normalised as ``detector.json`` says) and a mask
[B, T] (True at real frames) and return (video_logits [B], frame_logits [B, T]); T and S are fixed at export
time, the batch size is free. Each export is checked against PyTorch on random inputs at batch sizes 1 and 3
(traced at 2; tolerance 1e-4). What tracing prints meanwhile (TracerWarnings, the exporter's C++ shape-inference
notes, "a GRU with batch size other than 1 may fail") is silenced: the check is what tells.

ONNX uses torch's TorchScript-based exporter (``dynamo=False``: the dynamo exporter needs onnxscript, which
is not a dependency). It exports the packed-sequence recurrence of the gru/lstm heads (lengths from the mask
become the ONNX GRU/LSTM ``sequence_lens``), so variable-length masks work. The transformer head exports only
with autograd on: under no_grad nn.TransformerEncoderLayer takes its fused fast path
(``aten::_transformer_encoder_layer_fwd``), which has no ONNX symbolic. If an export still fails, the
exporter's own message is reported as a DfdError naming the head.

The bundle always holds every tensor, also for a checkpoint that holds only a frozen-base run's trained tensors
(rebuilt with its base first: ``--base-weights``), so it loads without the base. ``--merge`` folds the LoRA /
SVD residual layers of a finetune.method into plain nn.Linear layers first (``merge_finetuned``): the bundle,
ONNX and TorchScript are then a plain model (detector.json: method full), as fast as one without the method.
"""

import contextlib
import os
import sys
import warnings
from pathlib import Path

from dfdtrain.commands._common import add_base_weights_argument, check_minimum
from dfdtrain.core.errors import DfdError, one_line

HELP = "export a trained detector as a bundle (model.safetensors + detector.json), optionally ONNX / TorchScript"

TOLERANCE = 1e-4
CHECK_BATCH_SIZES = (1, 3)  # the graphs are traced at batch size 2


@contextlib.contextmanager
def quiet_tracing():
    """No warnings from tracing, Python's or those the exporter's C++ code writes straight to file descriptor 2
    (an export that fails still raises, with its own message)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def add_arguments(parser):
    parser.add_argument("--checkpoint", required=True,
                        help="a run directory, a checkpoint folder (RUN/checkpoints/best) or a bundle")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--onnx", action="store_true", help="also write model.onnx (checked with onnxruntime)")
    parser.add_argument("--torchscript", action="store_true", help="also write model.ts (torch.jit.trace)")
    parser.add_argument("--frames", type=int, help="fixed number of frames T of the graph (default: as in training)")
    parser.add_argument("--size", type=int, help="fixed crop size S of the graph (default: as in training)")
    parser.add_argument("--merge", action="store_true",
                        help="fold LoRA / SVD residual layers (finetune.method lora, svd_residual) into plain "
                             "layers: the bundle, ONNX and TorchScript are a plain model")
    add_base_weights_argument(parser)


def _wrapper(model):
    import torch

    from dfdtrain.models.detector import ClipDetector

    if isinstance(model, ClipDetector):  # its forward has no data-dependent branch: traced as it is
        return model.eval()

    class FramesAndMask(torch.nn.Module):
        """Backbone on every frame, then the head with the mask.

        The detector's own forward skips padded frames with a data-dependent branch that a trace would
        freeze; running the backbone on all frames gives the same result because every head zeroes the
        padded positions on entry (it only costs the compute of the padded frames).
        """

        def __init__(self, detector):
            super().__init__()
            self.detector = detector

        def forward(self, frames, mask):
            batch, time = frames.shape[0], frames.shape[1]
            features = self.detector.backbone(frames.flatten(0, 1))
            return self.detector.head(features.reshape(batch, time, -1), mask)

    return FramesAndMask(model).eval()


def example_inputs(batch, frames, size, seed=0):
    """Random normalised frames and a mask with one real frame fewer per sample (row 0 full, at least 1 real)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn((batch, frames, 3, size, size), generator=generator)
    mask = torch.ones((batch, frames), dtype=torch.bool)
    for row in range(batch):
        mask[row, max(1, frames - row):] = False  # padding at the end, as the sampler pads
    return inputs, mask


def export_onnx(model, part, path, frames, size):
    """Write ``path`` (ONNX) and return the max |onnxruntime - PyTorch| over both outputs (``part``: the head or
    clip backbone, named in the message when it does not export)."""
    import numpy as np
    import torch

    import onnxruntime

    wrapper = _wrapper(model)
    inputs, mask = example_inputs(2, frames, size)
    # autograd stays on: under no_grad the transformer head takes a fused fast path that ONNX cannot express
    try:
        with quiet_tracing():
            torch.onnx.export(wrapper, (inputs, mask), str(path), input_names=["frames", "mask"],
                              output_names=["video_logits", "frame_logits"], dynamo=False, opset_version=17,
                              dynamic_axes={"frames": {0: "batch"}, "mask": {0: "batch"},
                                            "video_logits": {0: "batch"}, "frame_logits": {0: "batch"}})
    except Exception as error:
        raise DfdError(f"--onnx: {part} does not export to ONNX: {type(error).__name__}: {one_line(error)}") from None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    differences = []
    for batch in CHECK_BATCH_SIZES:
        check_inputs, check_mask = example_inputs(batch, frames, size, seed=1)
        with torch.no_grad():
            expected = [output.numpy() for output in wrapper(check_inputs, check_mask)]
        got = session.run(None, {"frames": check_inputs.numpy(), "mask": check_mask.numpy()})
        differences += [float(np.abs(a - b).max()) for a, b in zip(got, expected)]
    return max(differences)


def export_torchscript(model, path, frames, size):
    """Write ``path`` (a traced TorchScript module) and return the max |TorchScript - PyTorch|."""
    import torch

    wrapper = _wrapper(model)
    inputs, mask = example_inputs(2, frames, size)
    differences = []
    with torch.no_grad(), quiet_tracing():
        traced = torch.jit.trace(wrapper, (inputs, mask), check_trace=False)
        traced.save(str(path))
        loaded = torch.jit.load(str(path))
        for batch in CHECK_BATCH_SIZES:
            check_inputs, check_mask = example_inputs(batch, frames, size, seed=1)
            expected = wrapper(check_inputs, check_mask)
            got = loaded(check_inputs, check_mask)
            differences += [float((a - b).abs().max()) for a, b in zip(got, expected)]
    return max(differences)


def _check(kind, difference):
    if not difference <= TOLERANCE:  # also catches NaN
        raise DfdError(f"{kind} export differs from PyTorch by {difference:.3g} (tolerance {TOLERANCE:g})")


def run(args):
    from dfdtrain.models.bundle import export_bundle
    from dfdtrain.models.clip_backbones import is_clip_backbone

    check_minimum(args.frames, "--frames")
    check_minimum(args.size, "--size", 16)
    out_dir = Path(args.out)
    # one line on a bad checkpoint (or a missing base) before anything is written
    model, settings = export_bundle(args.checkpoint, out_dir, base_weights=args.base_weights, merge=args.merge)
    print(f"wrote {out_dir / 'model.safetensors'} and {out_dir / 'detector.json'} "
          f"(the bundle{', merged' if args.merge else ''}: predict --checkpoint {out_dir})")
    frames = args.frames or settings.clip.sampler.num_frames
    size = args.size or settings.clip.image_size
    if args.onnx:
        part = (f"the clip backbone {settings.model.backbone}" if is_clip_backbone(settings.model.backbone)
                else f"the '{settings.model.head}' head")
        difference = export_onnx(model, part, out_dir / "model.onnx", frames, size)
        _check("ONNX", difference)
        print(f"wrote {out_dir / 'model.onnx'} (frames [B,{frames},3,{size},{size}]); "
              f"max |onnxruntime - PyTorch| = {difference:.3g}")
    if args.torchscript:
        difference = export_torchscript(model, out_dir / "model.ts", frames, size)
        _check("TorchScript", difference)
        print(f"wrote {out_dir / 'model.ts'} (frames [B,{frames},3,{size},{size}]); "
              f"max |TorchScript - PyTorch| = {difference:.3g}")
    return 0
