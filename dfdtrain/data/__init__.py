"""The data layer: index -> manifest -> shards -> frames."""


def read_frames(source, indices, backend="pyav"):
    """Return exactly the frames at ``indices`` of a video (path or bytes) as a uint8 Tensor [T,H,W,3]."""
    import torch  # here, not at import time: probing workers and the CLI's --help need no torch

    from dfdtrain.data import video

    if backend != "pyav":
        raise ValueError(f"unknown decoder backend {backend!r} (known: pyav)")
    return torch.from_numpy(video.read_frames(source, indices))
