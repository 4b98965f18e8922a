"""The data layer: index -> manifest -> shards -> frames."""


def read_frames(source, indices, backend="pyav"):
    """Return exactly the frames at ``indices`` of a video (path or bytes) as a uint8 Tensor [T,H,W,3].

    ``backend`` names a decoder in ``dfdtrain.data.decode.decoders.DECODERS`` (pyav, sequential, torchcodec, dali,
    auto); frames come out upright (the display rotation applied) and in the order of ``indices``.
    """
    import torch  # here, not at import time: probing workers and the CLI's --help need no torch

    from dfdtrain.data.decode.decoders import build_decoder

    return torch.from_numpy(build_decoder(backend).read(source, indices))
