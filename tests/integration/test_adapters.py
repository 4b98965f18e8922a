"""finetune.method adapter (StA's bottleneck after each ViT block) on a small timm ViT (vit_tiny, untrained, 32 px):
the identity at init, which tensors get gradients, the trainable count, training then a state-dict round trip,
a traced export, and the temporal variant (frames of a clip mix, clips do not, padding works)."""

import copy
import functools
import warnings

import pytest
import torch

from dfdtrain.config import FinetuneConfig
from dfdtrain.core.errors import DfdError
from dfdtrain.models.adapters import Adapter, insert_adapters
from dfdtrain.models.detector import build_detector
from dfdtrain.models.finetune_methods import apply_finetune, finetune_method

VIT = "vit_tiny_patch16_224"
SIZE = 32
WIDTH, BLOCKS, HEAD = 192, 12, 90625  # vit_tiny: embed_dim, blocks; the mean head's parameters


@functools.lru_cache(maxsize=1)
def _built():
    torch.manual_seed(0)
    return build_detector(VIT, "mean", pretrained=False, image_size=SIZE)


def vit():
    return copy.deepcopy(_built())  # one build (~1.5 s of CPU) for the whole file


def adapted(temporal=False, **options):
    model = vit()
    assert apply_finetune(model, FinetuneConfig(method="adapter", adapter_temporal=temporal, **options)) is None
    return model


def clips(seed=1, batch=2, time=3):
    return torch.randn(batch, time, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


PADDED = torch.tensor([[True, True, True], [True, True, False]])


def perturb_adapters(model, std=0.05):
    """Non-zero up-projections (they start at zero), so the adapters change the output."""
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for block in model.backbone.blocks:
            block.adapter.up.weight.normal_(std=std, generator=generator)


@pytest.mark.parametrize("temporal", [False, True])
def test_adapters_start_as_the_frozen_model(temporal):
    base, model = vit().eval(), adapted(temporal).eval()
    assert all(type(block.adapter) is Adapter for block in model.backbone.blocks)
    assert not any(hasattr(layer, "merged") for layer in model.modules())  # no plain-layer form: export keeps them
    with torch.no_grad():
        for mask in (None, PADDED):
            assert torch.allclose(model(clips(), mask)[0], base(clips(), mask)[0], atol=1e-5, rtol=0)
            assert torch.allclose(model(clips(), mask)[1], base(clips(), mask)[1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("temporal", [False, True])
def test_only_the_adapters_and_the_head_train(temporal):
    model = adapted(temporal).train()
    perturb_adapters(model)  # up = 0 gives down no gradient on the first step
    model(clips(), PADDED)[0].sum().backward()
    parts = ("down.weight", "down.bias", "up.weight", "up.bias") + (("temporal.weight", "temporal.bias") if temporal
                                                                     else ())
    expected = {f"backbone.blocks.{i}.adapter.{part}" for i in range(BLOCKS) for part in parts}
    expected |= {f"head.{name}" for name, _ in model.head.named_parameters()}
    assert {name for name, p in model.named_parameters() if p.requires_grad} == expected
    # the class token skips the temporal mixing and is all the last block passes on (as in StA)
    dead = {f"backbone.blocks.{BLOCKS - 1}.adapter.temporal.{part}" for part in ("weight", "bias")} if temporal else set()
    assert {name for name, p in model.named_parameters() if p.grad is not None and bool(p.grad.abs().sum() > 0)} \
        == expected - dead
    assert not any(name.endswith("adapter.up.weight") for name, _ in model.named_buffers())


def test_the_trainable_count_and_vit_large():
    def per_block(width, bottleneck, temporal=False):  # down, up (+ the depthwise temporal conv, kernel 3)
        return width * bottleneck + bottleneck + bottleneck * width + width + (4 * bottleneck if temporal else 0)

    for temporal, dim in ((False, 0), (True, 0), (False, 16)):
        model = adapted(temporal, adapter_dim=dim)
        bottleneck = dim or WIDTH // 2  # StA: half the width
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert trainable == HEAD + BLOCKS * per_block(WIDTH, bottleneck, temporal)
    assert HEAD + BLOCKS * per_block(WIDTH, 96) == 536449
    # ViT-L/14 (24 blocks, D=1024, 304M): StA's bottleneck 512 trains 25.2M (8.3%), 64 trains 3.2M (1.0%)
    large = sum(p.numel() for p in Adapter(1024, 512).parameters())
    assert large == per_block(1024, 512) and 24 * large == 25202688
    assert abs(24 * large / 304e6 - 0.0829) < 1e-3 and abs(24 * per_block(1024, 64) / 304e6 - 0.0104) < 1e-3
    assert finetune_method(FinetuneConfig(method="adapter", adapter_dim=64, adapter_temporal=True)) == \
        "adapter (StA: bottleneck 64 after each block, temporal)"


@pytest.mark.parametrize("temporal", [False, True])
def test_training_moves_the_output_and_a_state_dict_round_trip_reproduces_it(temporal):
    model = adapted(temporal).train()
    base = {name: value.detach().clone() for name, value in model.backbone.state_dict().items()
            if ".adapter." not in name}
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    labels = torch.tensor([1.0, 0.0])
    for _ in range(3):
        optimizer.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(model(clips(), PADDED)[0].float(), labels).backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        trained = model(clips(), PADDED)[0]
        assert not torch.allclose(trained, vit().eval()(clips(), PADDED)[0], atol=1e-4)
        assert all(torch.equal(value, model.backbone.state_dict()[name]) for name, value in base.items())
        assert any(float(block.adapter.up.weight.abs().max()) > 0 for block in model.backbone.blocks)
        again = adapted(temporal).eval()
        again.load_state_dict(model.state_dict())  # strict: the same keys (blocks.i.adapter.*) and nothing else
        assert torch.allclose(again(clips(), PADDED)[0], trained, atol=1e-6, rtol=0)


def test_the_export_wrapper_traces_the_spatial_adapters():
    from dfdtrain.commands.export import _wrapper, example_inputs

    model = adapted()
    perturb_adapters(model)
    wrapper = _wrapper(model)
    frames, mask = example_inputs(2, 3, SIZE)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings
        traced = torch.jit.trace(wrapper, (frames, mask), check_trace=False)
        assert torch.allclose(traced(frames, mask)[0], wrapper(frames, mask)[0], atol=1e-5, rtol=0)
        assert torch.allclose(wrapper(frames, mask)[0], model(frames, mask)[0], atol=1e-5, rtol=0)


def backbone_features(model, frames, mask=None):
    """The backbone's output per real frame [N, D], as the detector runs it."""
    seen = []
    handle = model.backbone.register_forward_hook(lambda module, args, output: seen.append(output))
    try:
        model(frames, mask)
    finally:
        handle.remove()
    return seen[0]


def test_the_temporal_adapters_mix_the_frames_of_a_clip_and_not_across_clips():
    model = adapted(temporal=True).eval()
    perturb_adapters(model)
    frames = clips()
    changed = frames.clone()
    changed[0, 0] += 1.0  # clip 0, frame 0
    with torch.no_grad():
        before, after = backbone_features(model, frames), backbone_features(model, changed)
        moved = (after - before).abs().amax(dim=1).reshape(2, 3)
        assert bool((moved[0] > 1e-4).all())  # frames 1, 2 of clip 0 see frame 0
        assert float(moved[1].max()) == 0.0  # clip 1 does not
        plain = vit().eval()  # without the temporal mixing, frame 0 changes only itself
        base_moved = (backbone_features(plain, changed) - backbone_features(plain, frames)).abs().amax(dim=1)
        assert float(base_moved[1:].max()) == 0.0


def test_the_temporal_adapters_with_padding_and_on_the_backbone_alone():
    model = adapted(temporal=True).eval()
    perturb_adapters(model)
    frames = clips()
    with torch.no_grad():
        padded = backbone_features(model, frames, PADDED)  # 5 real frames reach the backbone
        assert padded.shape == (5, WIDTH)
        garbage = frames.clone()
        garbage[1, 2] = 100.0  # what a padded frame holds never matters
        assert torch.equal(backbone_features(model, garbage, PADDED), padded)
        # clip 1 cut to its 2 real frames is what the padded batch gives for them (padding = zeros = clip end)
        alone = backbone_features(model, frames[1:, :2])
        assert torch.allclose(padded[3:], alone, atol=1e-5, rtol=0)
        assert torch.allclose(model(frames, PADDED)[0][1:], model(frames[1:, :2])[0], atol=1e-5, rtol=0)
        model.backbone(frames[0, :1])  # one image alone is a one-frame clip
        with pytest.raises(DfdError, match=r"finetune.adapter_temporal: .* not on 6 images"):
            model.backbone(frames.flatten(0, 1))  # images without their clip: refused


def test_a_backbone_without_transformer_blocks_is_refused():
    model = build_detector("resnet18", "mean", pretrained=False)
    with pytest.raises(DfdError, match=r"^finetune.method adapter: the backbone \w+ has no transformer blocks"):
        apply_finetune(model, FinetuneConfig(method="adapter"))
    with pytest.raises(DfdError, match="already has adapters"):
        insert_adapters(adapted())


def test_gradient_checkpointing_reaches_the_temporal_adapters():
    model = vit()
    model.backbone.set_grad_checkpointing(True)  # as model.grad_checkpointing builds it
    apply_finetune(model, FinetuneConfig(method="adapter", adapter_temporal=True))
    perturb_adapters(model)
    model.train()
    model(clips(), PADDED)[0].sum().backward()  # the blocks re-run in backward with the clip still known
    trained = [parameter for parameter in model.parameters() if parameter.requires_grad]
    assert trained and all(parameter.grad is not None for parameter in trained)
