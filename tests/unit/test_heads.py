"""Temporal heads on small real inputs: shapes, gradients, padding invariance, packing, bf16, registry."""

import pytest
import torch

from dfdtrain.models.heads import HEADS, build_head, dense_stack

FEATURES = 32
LENGTHS = (6, 4, 1)  # real frames per sample; T = 6, padding at the end

# (head, options): every head with its defaults, then option combinations (recurrent 1-3 layers,
# bidirectional, dense stacks of 0-3 hidden layers, batch-norm, transformer cls/mean pooling).
CONFIGS = [
    ("mean", {}),
    ("max", {}),
    ("attention", {}),
    ("gru", {}),
    ("lstm", {}),
    ("transformer", {}),
    ("dense", {}),
    ("se", {}),
    ("mean", {"hidden": [64], "batch_norm": True}),
    ("max", {"hidden": [], "dropout": 0.0}),
    ("attention", {"attention_hidden": 16, "hidden": [32, 16], "batch_norm": True}),
    ("gru", {"num_layers": 1, "hidden_size": 16, "hidden": [8]}),
    ("gru", {"num_layers": 2, "hidden_size": 16, "hidden": [32, 16], "dropout": 0.3, "batch_norm": True}),
    ("gru", {"num_layers": 3, "hidden_size": 16, "hidden": [64, 32, 16], "bidirectional": True}),
    ("lstm", {"num_layers": 2, "hidden_size": 16, "bidirectional": True, "batch_norm": True}),
    ("lstm", {"num_layers": 3, "hidden_size": 8, "hidden": []}),
    ("transformer", {"pooling": "mean", "d_model": 32, "num_heads": 2, "dim_feedforward": 64, "num_layers": 1}),
    ("transformer", {"pooling": "cls", "d_model": 16, "num_heads": 4, "num_layers": 3, "batch_norm": True}),
    ("dense", {"hidden": [16], "batch_norm": True}),
    ("se", {"reduction": 4, "hidden": [64, 32], "batch_norm": True}),
]
CONFIG_IDS = [f"{name}-{index}" for index, (name, _) in enumerate(CONFIGS)]


def padded_inputs(seed=0, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(len(LENGTHS), max(LENGTHS), FEATURES, generator=generator).to(dtype)
    mask = torch.arange(max(LENGTHS)).unsqueeze(0) < torch.tensor(LENGTHS).unsqueeze(1)
    return features, mask


def make_head(name, options, seed=0):
    torch.manual_seed(seed)
    return build_head(name, in_features=FEATURES, **options)


def test_every_head_is_registered():
    assert HEADS.names() == sorted(["mean", "max", "attention", "gru", "lstm", "transformer", "dense", "se"])


@pytest.mark.parametrize("name,options", CONFIGS, ids=CONFIG_IDS)
def test_shapes_finite_outputs_and_gradients(name, options):
    head = make_head(name, options).train()
    features, mask = padded_inputs()
    video_logits, frame_logits = head(features, mask)
    assert video_logits.shape == (3,) and frame_logits.shape == (3, 6)
    assert torch.isfinite(video_logits).all() and torch.isfinite(frame_logits).all()
    assert (frame_logits[~mask] == 0).all()  # documented: padded frame logits are 0

    (video_logits.sum() + frame_logits.sum()).backward()
    for parameter_name, parameter in head.named_parameters():
        assert parameter.grad is not None, f"{parameter_name} got no gradient"
        assert parameter.grad.abs().sum() > 0, f"{parameter_name} got an all-zero gradient"

    full_mask = torch.ones_like(mask)  # no padding at all behaves normally too
    video_logits, frame_logits = head.eval()(features, full_mask)
    assert torch.isfinite(video_logits).all() and torch.isfinite(frame_logits).all()
    assert (frame_logits != 0).all()


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("name,options", CONFIGS, ids=CONFIG_IDS)
def test_padding_does_not_change_video_logits(name, options, training):
    head = make_head(name, options).train(training)
    features, mask = padded_inputs()
    torch.manual_seed(1)  # the same dropout masks for both calls
    video_logits, frame_logits = head(features, mask)
    for garbage in (torch.randn(features.shape) * 1000, torch.full(features.shape, float("nan"))):
        perturbed = torch.where(mask.unsqueeze(-1), features, garbage)
        torch.manual_seed(1)
        perturbed_video_logits, perturbed_frame_logits = head(perturbed, mask)
        torch.testing.assert_close(perturbed_video_logits, video_logits)
        torch.testing.assert_close(perturbed_frame_logits[mask], frame_logits[mask])


@pytest.mark.parametrize("name", ["gru", "lstm"])
def test_recurrent_heads_reject_a_mask_that_is_not_a_prefix(name):
    head = make_head(name, {})
    features, mask = padded_inputs()
    mask[1] = torch.tensor([True, False, True, True, False, False])
    with pytest.raises(ValueError, match="padding at the end"):
        head(features, mask)


@pytest.mark.parametrize("name,options", CONFIGS, ids=CONFIG_IDS)
def test_a_padded_sample_matches_the_same_sample_alone(name, options):
    # stronger than perturbing the padding (heads zero it on entry): padded positions must also be left out
    # of pooling, attention and the recurrence (GRU/LSTM: packing works)
    head = make_head(name, options).eval()
    features, mask = padded_inputs()
    video_logits, frame_logits = head(features, mask)
    for sample, length in enumerate(LENGTHS):
        alone = features[sample:sample + 1, :length]
        alone_video, alone_frames = head(alone, torch.ones(1, length, dtype=torch.bool))
        torch.testing.assert_close(alone_video, video_logits[sample:sample + 1], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(alone_frames[0], frame_logits[sample, :length], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["gru", "lstm"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_recurrent_video_vector_is_each_directions_summary_of_the_clip(name, bidirectional):
    # h_n holds the forward direction after the last real frame and the backward one after the first frame
    head = make_head(name, {"num_layers": 2, "hidden_size": 16, "bidirectional": bidirectional}).eval()
    features, mask = padded_inputs()
    video_logits, _ = head(features, mask)
    for sample, length in enumerate(LENGTHS):
        _, final_state = head.rnn(features[sample:sample + 1, :length])
        hidden_state = final_state[0] if name == "lstm" else final_state  # LSTM: (h_n, c_n)
        last_layer = hidden_state[-2:] if bidirectional else hidden_state[-1:]  # [directions, 1, H]
        expected = head.classifier(torch.cat(list(last_layer), dim=1))[0, 0]
        torch.testing.assert_close(video_logits[sample], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("name,options", [("dense", {}), ("se", {"batch_norm": True}), ("dense", {"hidden": []})])
def test_frame_level_video_logit_is_the_mean_of_real_frame_logits(name, options, training):
    head = make_head(name, options).train(training)
    features, mask = padded_inputs()
    video_logits, frame_logits = head(features, mask)
    expected = torch.stack([frame_logits[sample, :length].mean() for sample, length in enumerate(LENGTHS)])
    torch.testing.assert_close(video_logits, expected)


def test_mean_and_max_heads_classify_the_pooled_feature():
    features, mask = padded_inputs()
    for name, pooled in (("mean", features[1, :4].mean(0)), ("max", features[1, :4].amax(0))):
        head = make_head(name, {}).eval()
        video_logits, frame_logits = head(features, mask)
        torch.testing.assert_close(video_logits[1], head.classifier(pooled.unsqueeze(0))[0, 0])
        torch.testing.assert_close(frame_logits[1, :4], head.classifier(features[1, :4])[:, 0])


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("name,options", CONFIGS, ids=CONFIG_IDS)
def test_forward_under_bf16_autocast(name, options, training):
    head = make_head(name, options).train(training)
    features, mask = padded_inputs(dtype=torch.bfloat16)  # what a backbone gives under autocast
    with torch.autocast("cpu", dtype=torch.bfloat16):
        video_logits, frame_logits = head(features, mask)
    assert video_logits.shape == (3,) and frame_logits.shape == (3, 6)
    assert torch.isfinite(video_logits).all() and torch.isfinite(frame_logits).all()


def test_unknown_head_names_the_close_match():
    with pytest.raises(KeyError, match="gru"):
        build_head("gruu", in_features=FEATURES)


def test_bad_inputs_and_options_are_clear_errors():
    features, mask = padded_inputs()
    with pytest.raises(ValueError, match=r"\[B, T, 64\]"):
        build_head("mean", in_features=64)(features, mask)
    with pytest.raises(ValueError, match="max_frames"):
        build_head("transformer", in_features=FEATURES, max_frames=4)(features, mask)
    with pytest.raises(ValueError, match="pooling"):
        build_head("transformer", in_features=FEATURES, pooling="first")
    with pytest.raises(ValueError, match="num_layers"):
        build_head("gru", in_features=FEATURES, num_layers=0)


def count_parameters(module):
    return sum(parameter.numel() for parameter in module.parameters())


def test_parameter_counts():
    def linear(inputs, outputs):
        return inputs * outputs + outputs

    def recurrent(gates, inputs, hidden_size, layers, directions):
        first = gates * (inputs * hidden_size + hidden_size * hidden_size + 2 * hidden_size)
        later = gates * (directions * hidden_size * hidden_size + hidden_size * hidden_size + 2 * hidden_size)
        return directions * (first + (layers - 1) * later)

    default_stack = linear(FEATURES, 256) + linear(256, 128) + linear(128, 64) + linear(64, 1)
    assert count_parameters(dense_stack(FEATURES)) == default_stack
    # batch-norm: the Linear before it drops its bias, BatchNorm1d adds a scale and a shift per unit
    assert count_parameters(dense_stack(FEATURES, [16], batch_norm=True)) == FEATURES * 16 + 2 * 16 + linear(16, 1)
    for name in ("mean", "max", "dense"):
        assert count_parameters(build_head(name, FEATURES)) == default_stack
    assert count_parameters(build_head("se", FEATURES)) == default_stack + linear(FEATURES, 2) + linear(2, FEATURES)
    assert count_parameters(build_head("attention", FEATURES)) == default_stack + linear(FEATURES, 128) + 128

    gru = build_head("gru", FEATURES, hidden_size=16, num_layers=2, hidden=[8])
    assert count_parameters(gru) == recurrent(3, FEATURES, 16, 2, 1) + linear(16, 8) + linear(8, 1)
    lstm = build_head("lstm", FEATURES, hidden_size=16, num_layers=3, bidirectional=True, hidden=[])
    assert count_parameters(lstm) == recurrent(4, FEATURES, 16, 3, 2) + linear(32, 1)

    # the default transformer (d_model 256, 2 layers) is small: about a million parameters
    assert 0.5e6 < count_parameters(build_head("transformer", FEATURES)) < 2e6


def test_every_head_says_what_its_per_position_scores_are():
    """Outputs name a head's per-position scores by its kind (frame_scores, step_scores, token_scores)."""
    from dfdtrain.models.heads import SCORE_KINDS, score_kind

    kinds = {name: score_kind(name) for name in HEADS.names()}
    assert set(kinds.values()) <= set(SCORE_KINDS)
    assert kinds["gru"] == kinds["lstm"] == "step" and kinds["transformer"] == "token"
    assert all(kinds[name] == "frame" for name in ("mean", "max", "attention", "dense", "se"))
