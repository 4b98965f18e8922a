"""Temporal heads: per-frame backbone features [B,T,D] + mask [B,T] -> (video_logits [B], frame_logits [B,T]).

    head = build_head("gru", in_features=1280, num_layers=2, hidden=[128, 64], batch_norm=True)
    video_logits, frame_logits = head(features, mask)

``mask[b, t]`` is False at padding (a video shorter than T). Padded positions never influence
``video_logits``: every head zeroes them on entry and leaves them out of pooling, recurrence, attention and
batch-norm statistics. ``frame_logits`` at padded positions are 0. Every sample needs at least one real frame.

Heads (all end in ``dense_stack``: ``hidden`` widths, ``dropout``, ``batch_norm``, then a 1-unit Linear):
  mean, max    masked mean / max of the frame features -> dense stack. Frame logits: the same stack per frame,
               so for ``mean`` the video logit is the classifier of the mean feature, not the mean of the
               frame logits (the stack is non-linear).
  attention    a small MLP scores each frame, softmax over real frames, weighted sum -> dense stack.
  gru, lstm    stacked recurrent layers over packed sequences (the mask must be a prefix of True), last real
               step (bidirectional: + backward first step) -> dense stack. Frame logits: stack per step.
  transformer  input projection, learned positions, encoder with a key padding mask, CLS or mean pooling.
  dense        frame-level model: dense stack per frame -> frame logits; video logit = their masked mean.
  se           squeeze-and-excitation channel gate per frame, then as ``dense``.
"""

import torch
from torch import nn

from dfdtrain.core.errors import DfdError, one_line
from dfdtrain.core.registry import Registry

HEADS = Registry("head")

# What a head's per-position scores (sigmoid of ``frame_logits``) are, by its ``score_kind``. Outputs name them
# ``<kind>_scores``: only "frame" scores judge each frame on its own.
SCORE_KINDS = {
    "frame": "each frame on its own",
    "step": "the recurrent state after frames 1..t (cumulative: the last one is the video score's input)",
    "token": "each frame's token after attention over the whole clip",
    # clip backbones (head: none, dfdtrain.models.clip_backbones)
    "segment": "the clip backbone's logit for the stretch of frames the frame belongs to (one per temporal cell "
               "it keeps, e.g. 8 frames each for r2plus1d_18 on 16 frames)",
    "clip": "the video score at every frame (the model scores the clip as a whole)",
}

DEFAULT_HIDDEN = (256, 128, 64)  # the reference report's GAP -> Dense 256/128/64 stack
DEFAULT_DROPOUT = 0.2

# Sizes a head's options may ask for (options come from configs and from other people's detector.json): far
# above any real head, far below what would exhaust memory before a check could say so.
MAX_SIZE = 2**16  # any width, hidden size, head count, frame count, ...
MAX_LAYERS = 256  # num_layers, and the number of ``hidden`` layers
MAX_HEAD_PARAMETERS = 2**30  # 4 GiB in float32; counted on the meta device before anything is allocated


def head_parameter_count(name, in_features, **options):
    """How many parameters head ``name`` would hold, counted on the meta device (nothing allocated)."""
    with torch.device("meta"):
        return sum(parameter.numel() for parameter in HEADS.get(name)(in_features, **options).parameters())


def build_head(name, in_features, **options):
    """The head registered as ``name`` for backbone features of width ``in_features`` (refused, before any
    allocation, when it would hold more than MAX_HEAD_PARAMETERS parameters)."""
    count = head_parameter_count(name, in_features, **options)
    if count > MAX_HEAD_PARAMETERS:
        raise DfdError(f"model.head_options: the {name} head would hold {count:,} parameters on {in_features} "
                       f"features (at most {MAX_HEAD_PARAMETERS:,})")
    return HEADS.get(name)(in_features, **options)


def score_kind(head_name):
    """What the per-position scores of head ``head_name`` are: a key of SCORE_KINDS (frame, step, token)."""
    return HEADS.get(head_name).score_kind


def _option_problem(default, value, option=""):
    """Why ``value`` cannot stand where a head's option defaults to ``default`` (None if it can)."""
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "must be true or false"
    if isinstance(value, bool):
        return "must not be true or false"
    if isinstance(default, int):
        most = MAX_LAYERS if option == "num_layers" else MAX_SIZE
        if not (isinstance(value, int) and value >= 1):
            return "must be an integer >= 1"
        return None if value <= most else f"must be at most {most}"
    if isinstance(default, float):
        return None if isinstance(value, (int, float)) and 0 <= value <= 1 else "must be a number between 0 and 1"
    if isinstance(default, tuple):  # layer widths
        if not (isinstance(value, (list, tuple)) and all(isinstance(width, int) and not isinstance(width, bool)
                                                         and width >= 1 for width in value)):
            return "must be a list of layer widths (integers >= 1)"
        if len(value) > MAX_LAYERS or any(width > MAX_SIZE for width in value):
            return f"must be at most {MAX_LAYERS} layer widths, each at most {MAX_SIZE}"
        return None
    return None if isinstance(value, type(default)) else f"must be a {type(default).__name__}"


def check_head_options(name, options):
    """None if the head ``name`` takes ``options``, else (option or None, problem) for a config error.

    An option's type is its default's (ints are counts >= 1, floats fractions in [0, 1], ``hidden`` a list of
    widths); rules between options (transformer ``d_model`` divisible by ``num_heads``) come from building the
    head once on small features.
    """
    import inspect

    parameters = dict(inspect.signature(HEADS.get(name).__init__).parameters)
    for skipped in ("self", "in_features"):
        parameters.pop(skipped)
    for option, value in options.items():
        if option not in parameters:
            return option, f"is not an option of the {name} head (options: {', '.join(parameters)})"
        problem = _option_problem(parameters[option].default, value, option)
        if problem:
            return option, one_line(f"{problem}, not {value!r}", 300)
    try:
        head_parameter_count(name, 8, **options)  # built on the meta device: nothing allocated
    except (ValueError, TypeError, AssertionError) as error:
        return None, str(error)
    return None


# ---------------------------------------------------------------------------------------------------------
# Shared pieces


def dense_stack(in_features, hidden=DEFAULT_HIDDEN, dropout=DEFAULT_DROPOUT, batch_norm=False):
    """Linear [-> BatchNorm1d] -> ReLU -> Dropout for each width in ``hidden``, then Linear(-> 1).

    Works on [N, in_features]; ``hidden=[]`` is a single Linear (logistic regression on the features).
    """
    layers = []
    width = in_features
    for out_width in hidden:
        # batch-norm has its own shift, so the Linear before it needs no bias
        layers.append(nn.Linear(width, out_width, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm1d(out_width))
        layers.append(nn.ReLU())
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = out_width
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers)


def masked_mean(values, mask):
    """Mean over dim 1 (time) of ``values`` [B,T,...] at the real positions of ``mask`` [B,T]."""
    mask = mask.view(*mask.shape, *([1] * (values.dim() - 2)))
    # masked_fill, not multiplication: padding holding inf/NaN would turn 0 * inf into NaN
    total = values.masked_fill(~mask, 0).sum(dim=1)
    return total / mask.sum(dim=1).to(total.dtype)


def masked_max(values, mask):
    """Max over dim 1 (time) of ``values`` [B,T,D] at the real positions of ``mask`` [B,T]."""
    return values.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(dim=1)


def prepare_inputs(features, mask, in_features):
    """Check the shapes and return ``features`` with padded frames zeroed.

    Zeroing keeps arbitrary padding (even NaN) out of every later product, e.g. attention weights of 0 times
    a NaN value would still be NaN.
    """
    if features.dim() != 3 or features.shape[-1] != in_features:
        raise ValueError(f"head expects features [B, T, {in_features}], got {list(features.shape)}")
    if mask.dtype != torch.bool or mask.shape != features.shape[:2]:
        raise ValueError(f"head expects a bool mask {list(features.shape[:2])}, got {mask.dtype} "
                         f"{list(mask.shape)}")
    return features.masked_fill(~mask.unsqueeze(-1), 0)


def classify_frames(classifier, frame_vectors, mask):
    """frame logits [B,T]: ``classifier`` on the real frames only (padding: 0).

    Only real frames go through, so batch-norm statistics are never polluted by padding.
    """
    logits = classifier(frame_vectors[mask]).squeeze(-1)
    frame_logits = logits.new_zeros(mask.shape)
    frame_logits[mask] = logits
    return frame_logits


def classify_video_and_frames(classifier, video_vectors, frame_vectors, mask):
    """(video logits [B], frame logits [B,T]) from one classifier call over [videos; real frames].

    One call, not two: batch-norm then normalises video and frame vectors with the same batch statistics in
    training and updates its running statistics once per step, so evaluation sees what training saw.
    """
    batch = video_vectors.shape[0]
    logits = classifier(torch.cat([video_vectors, frame_vectors[mask]])).squeeze(-1)
    frame_logits = logits.new_zeros(mask.shape)
    frame_logits[mask] = logits[batch:]
    return logits[:batch], frame_logits


def prefix_lengths(mask):
    """Number of real frames per sample [B] (int64, CPU); the mask must be True then False."""
    lengths = mask.sum(dim=1)
    positions = torch.arange(mask.shape[1], device=mask.device)
    if not torch.equal(mask, positions.unsqueeze(0) < lengths.unsqueeze(1)):
        raise ValueError("recurrent heads need padding at the end: each mask row must be True...True "
                         "then False...False")
    return lengths.cpu()


# ---------------------------------------------------------------------------------------------------------
# Video-level heads: pool over time, then classify


@HEADS.register("mean")
class MeanPoolHead(nn.Module):
    """Masked mean of the frame features -> dense stack; frame logits = the same stack per frame."""

    score_kind = "frame"
    pool = staticmethod(masked_mean)

    def __init__(self, in_features, hidden=DEFAULT_HIDDEN, dropout=DEFAULT_DROPOUT, batch_norm=False):
        super().__init__()
        self.in_features = in_features
        self.classifier = dense_stack(in_features, hidden, dropout, batch_norm)

    def forward(self, features, mask):
        features = prepare_inputs(features, mask, self.in_features)
        return classify_video_and_frames(self.classifier, self.pool(features, mask), features, mask)


@HEADS.register("max")
class MaxPoolHead(MeanPoolHead):
    """Masked max of the frame features (per channel) -> dense stack; frame logits = the stack per frame."""

    pool = staticmethod(masked_max)


@HEADS.register("attention")
class AttentionPoolHead(nn.Module):
    """Attention pooling: an MLP scores each frame, softmax over the real frames, weighted sum -> dense stack.

    ``attention_hidden``: width of the scoring MLP (Linear -> tanh -> Linear(1)).
    """

    score_kind = "frame"

    def __init__(self, in_features, attention_hidden=128, hidden=DEFAULT_HIDDEN, dropout=DEFAULT_DROPOUT,
                 batch_norm=False):
        super().__init__()
        self.in_features = in_features
        # no bias on the score: softmax ignores a shift shared by all frames, so it would never train
        self.scorer = nn.Sequential(nn.Linear(in_features, attention_hidden), nn.Tanh(),
                                    nn.Linear(attention_hidden, 1, bias=False))
        self.classifier = dense_stack(in_features, hidden, dropout, batch_norm)

    def forward(self, features, mask):
        features = prepare_inputs(features, mask, self.in_features)
        scores = self.scorer(features).squeeze(-1).float().masked_fill(~mask, float("-inf"))
        weights = torch.softmax(scores, dim=1)  # in float32: bf16 softmax over many frames loses mass
        pooled = (weights.unsqueeze(-1).to(features.dtype) * features).sum(dim=1)
        return classify_video_and_frames(self.classifier, pooled, features, mask)


class RecurrentHead(nn.Module):
    """Stacked GRU/LSTM over the real frames (packed: padding never enters the recurrence) -> dense stack.

    The mask must be a prefix (True then False; the sampler pads at the end); otherwise ValueError.
    Video vector: the output at the last real step; bidirectional: forward last real step + backward first
    step (each direction's summary of the whole clip). Frame logits: the dense stack on each step's output.
    ``dropout`` applies between recurrent layers (when num_layers > 1) and in the dense stack.
    """

    rnn_class = None  # nn.GRU or nn.LSTM, set by the registered subclasses
    score_kind = "step"

    def __init__(self, in_features, hidden_size=256, num_layers=1, bidirectional=False,
                 hidden=DEFAULT_HIDDEN, dropout=DEFAULT_DROPOUT, batch_norm=False):
        super().__init__()
        if num_layers < 1:  # the reference notebooks used 1-3
            raise ValueError(f"num_layers must be at least 1, got {num_layers}")
        self.in_features = in_features
        self.hidden_size = hidden_size
        self.bidirectional = bidirectional
        # torch warns about (and ignores) dropout between layers when there is only one layer
        self.rnn = self.rnn_class(in_features, hidden_size, num_layers=num_layers, batch_first=True,
                                  bidirectional=bidirectional, dropout=dropout if num_layers > 1 else 0.0)
        directions = 2 if bidirectional else 1
        self.classifier = dense_stack(directions * hidden_size, hidden, dropout, batch_norm)

    def forward(self, features, mask):
        features = prepare_inputs(features, mask, self.in_features)
        lengths = prefix_lengths(mask)
        # autocast does not cover packed RNNs on every device: run the recurrence in the weights' dtype
        inputs = features.to(self.rnn.weight_ih_l0.dtype)
        packed = nn.utils.rnn.pack_padded_sequence(inputs, lengths, batch_first=True, enforce_sorted=False)
        packed_outputs, _ = self.rnn(packed)
        outputs, _ = nn.utils.rnn.pad_packed_sequence(packed_outputs, batch_first=True,
                                                      total_length=features.shape[1])  # [B, T, dirs * H]
        batch_index = torch.arange(outputs.shape[0], device=outputs.device)
        last_real = outputs[batch_index, lengths.to(outputs.device) - 1]  # [B, dirs * H]
        if self.bidirectional:
            # the backward direction has read the whole clip at step 0, not at the last real step
            video_vectors = torch.cat([last_real[:, :self.hidden_size], outputs[:, 0, self.hidden_size:]], dim=1)
        else:
            video_vectors = last_real
        return classify_video_and_frames(self.classifier, video_vectors, outputs, mask)


@HEADS.register("gru")
class GRUHead(RecurrentHead):
    """RecurrentHead with GRU layers (the reference notebooks' MobileNetV2/InceptionV3 + GRU)."""

    rnn_class = nn.GRU


@HEADS.register("lstm")
class LSTMHead(RecurrentHead):
    """RecurrentHead with LSTM layers (the reference CNN + LSTM video model)."""

    rnn_class = nn.LSTM


@HEADS.register("transformer")
class TransformerHead(nn.Module):
    """A small pre-norm transformer encoder over the frames -> dense stack.

    Features are projected to ``d_model`` (when it differs from in_features), get learned positional
    embeddings (at most ``max_frames`` frames; more is a ValueError) and are encoded with the padding as
    ``src_key_padding_mask``. ``pooling="cls"`` reads a learned CLS token's output, ``"mean"`` averages the
    real frames' outputs. Frame logits: the dense stack on each frame token's output.
    """

    POOLINGS = ("cls", "mean")
    score_kind = "token"

    def __init__(self, in_features, d_model=256, num_layers=2, num_heads=4, dim_feedforward=512, dropout=0.1,
                 max_frames=64, pooling="cls", hidden=DEFAULT_HIDDEN, batch_norm=False):
        super().__init__()
        if pooling not in self.POOLINGS:
            raise ValueError(f"transformer pooling must be one of {', '.join(self.POOLINGS)}, not {pooling!r}")
        if d_model % num_heads:
            raise ValueError(f"transformer d_model ({d_model}) must be divisible by num_heads ({num_heads})")
        self.in_features = in_features
        self.max_frames = max_frames
        self.pooling = pooling
        self.input_projection = nn.Linear(in_features, d_model) if d_model != in_features else nn.Identity()
        self.position_embedding = nn.Parameter(torch.zeros(max_frames, d_model))
        nn.init.trunc_normal_(self.position_embedding, std=0.02)
        if pooling == "cls":
            self.cls_token = nn.Parameter(torch.zeros(1, 1, d_model))
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        layer = nn.TransformerEncoderLayer(d_model, num_heads, dim_feedforward, dropout, batch_first=True,
                                           norm_first=True)
        # pre-norm layers leave the last output un-normalised: one final LayerNorm
        self.encoder = nn.TransformerEncoder(layer, num_layers, norm=nn.LayerNorm(d_model),
                                             enable_nested_tensor=False)
        self.classifier = dense_stack(d_model, hidden, dropout, batch_norm)

    def forward(self, features, mask):
        features = prepare_inputs(features, mask, self.in_features)
        batch, time = mask.shape
        if time > self.max_frames:
            raise ValueError(f"transformer head got {time} frames but max_frames is {self.max_frames}")
        tokens = self.input_projection(features) + self.position_embedding[:time]
        ignore = ~mask  # src_key_padding_mask: True = not attended to
        if self.pooling == "cls":
            tokens = torch.cat([self.cls_token.expand(batch, -1, -1).to(tokens.dtype), tokens], dim=1)
            ignore = torch.cat([ignore.new_zeros(batch, 1), ignore], dim=1)
        encoded = self.encoder(tokens, src_key_padding_mask=ignore)
        if self.pooling == "cls":
            video_vectors, frame_vectors = encoded[:, 0], encoded[:, 1:]
        else:
            video_vectors, frame_vectors = masked_mean(encoded, mask), encoded
        return classify_video_and_frames(self.classifier, video_vectors, frame_vectors, mask)


# ---------------------------------------------------------------------------------------------------------
# Frame-level heads: classify each frame, video logit = mean of the frame logits (frame averaging)


@HEADS.register("dense")
class FrameDenseHead(nn.Module):
    """The reference report's frame model: (pooled) features -> Dense 256/128/64 -> frame logit per frame.

    Video logit = masked mean of the frame logits.
    """

    score_kind = "frame"

    def __init__(self, in_features, hidden=DEFAULT_HIDDEN, dropout=DEFAULT_DROPOUT, batch_norm=False):
        super().__init__()
        self.in_features = in_features
        self.classifier = dense_stack(in_features, hidden, dropout, batch_norm)

    def frame_vectors(self, features):
        return features

    def forward(self, features, mask):
        features = prepare_inputs(features, mask, self.in_features)
        frame_logits = classify_frames(self.classifier, self.frame_vectors(features), mask)
        return masked_mean(frame_logits, mask), frame_logits


@HEADS.register("se")
class SqueezeExcitationHead(FrameDenseHead):
    """The reference report's SE-style channel attention, per frame: f' = f * sigmoid(W2 relu(W1 f)) -> dense.

    ``reduction``: W1 maps D -> D // reduction channels. The features arrive globally average pooled; since the
    gate is one scale per channel, rescaling after pooling equals SE on the feature map before pooling
    (mean(x * g) = mean(x) * g), and the squeeze input (the pooled map) is the same in both.
    Video logit = masked mean of the frame logits.
    """

    def __init__(self, in_features, reduction=16, hidden=DEFAULT_HIDDEN, dropout=DEFAULT_DROPOUT,
                 batch_norm=False):
        super().__init__(in_features, hidden, dropout, batch_norm)
        squeezed = max(1, in_features // reduction)
        self.gate = nn.Sequential(nn.Linear(in_features, squeezed), nn.ReLU(), nn.Linear(squeezed, in_features),
                                  nn.Sigmoid())

    def frame_vectors(self, features):
        return features * self.gate(features)
