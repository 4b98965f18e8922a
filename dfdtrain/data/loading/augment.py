"""Clip-consistent augmentation and error-level analysis of video batches, on whatever device the batch is on.

Every frame of a clip gets the same random parameters (a flip that changes from frame to frame would be a
temporal artefact the detector could learn instead of the manipulation). ``augment_clips``: uint8
[B,T,H,W,3] -> float [B,T,3,H,W] in [0, 1], settings from ``AugmentConfig`` (config ``data.augment``).
``ela``: error-level analysis |x - JPEG(x)|, the reference report's input transform. Normalisation and the
order of these steps belong to the clip contract (``dfdtrain.data.loading.clips.model_input``).
"""

import io
import math

import numpy as np
import torch
import torch.nn.functional as F


def _jpeg_roundtrip(clip_uint8, quality):
    """JPEG-compress every frame of one clip [T,H,W,3] uint8 at ``quality`` (on its device when possible)."""
    if clip_uint8.is_cuda:  # nvJPEG through torchvision: the clip stays on the GPU
        import warnings

        from torchvision.io import decode_jpeg, encode_jpeg

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            frames = list(clip_uint8.permute(0, 3, 1, 2).contiguous())
            decoded = decode_jpeg(encode_jpeg(frames, quality=int(quality)), device=clip_uint8.device)
        return torch.stack(decoded).permute(0, 2, 3, 1)
    from PIL import Image

    out = []
    for frame in clip_uint8.numpy():
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, format="JPEG", quality=int(quality))
        buffer.seek(0)
        out.append(np.asarray(Image.open(buffer).convert("RGB")))
    return torch.from_numpy(np.stack(out))


def ela(batch_uint8, quality=90, scale=10.0):
    """Error-level analysis: scaled |x - JPEG(x)| per pixel, float in [0, 1], shape as the input."""
    recompressed = torch.stack([_jpeg_roundtrip(clip, quality) for clip in batch_uint8])
    difference = (batch_uint8.float() - recompressed.float()).abs() / 255.0
    return (difference * scale).clamp(0, 1)


def _gaussian_kernel(sigma, device):
    radius = max(1, int(math.ceil(3 * sigma)))
    positions = torch.arange(-radius, radius + 1, device=device, dtype=torch.float32)
    kernel = torch.exp(-positions ** 2 / (2 * sigma ** 2))
    return kernel / kernel.sum()


def _blur(clip, sigma):
    """Separable Gaussian blur of one clip [T,3,H,W] float."""
    kernel = _gaussian_kernel(sigma, clip.device)
    channels, pad = clip.shape[1], len(kernel) // 2
    horizontal = kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)
    vertical = kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1)
    clip = F.conv2d(F.pad(clip, (pad, pad, 0, 0), mode="replicate"), horizontal, groups=channels)
    return F.conv2d(F.pad(clip, (0, 0, pad, pad), mode="replicate"), vertical, groups=channels)


def augment_clips(batch_uint8, config, generator):
    """Augment a batch uint8 [B,T,H,W,3] -> float [B,T,3,H,W] in [0, 1], one parameter draw per clip.

    ``generator``: a numpy Generator (the parameters are drawn on the CPU: cheap, and reproducible
    whatever the device).
    """
    batch_size, frames, height, width = batch_uint8.shape[:4]
    clips = []
    for clip in batch_uint8:
        if config.jpeg and generator.random() < config.jpeg:
            clip = _jpeg_roundtrip(clip, generator.integers(config.jpeg_quality[0], config.jpeg_quality[1] + 1))
        clips.append(clip)
    batch = torch.stack(clips).permute(0, 1, 4, 2, 3).float() / 255.0  # [B,T,3,H,W]

    # one affine per clip (flip, rotation, zoom, shift), applied to all its frames
    angle = np.radians(generator.uniform(-config.rotate, config.rotate, batch_size))
    scale = generator.uniform(config.zoom[0], config.zoom[1], batch_size)
    shift = generator.uniform(-config.translate, config.translate, (batch_size, 2)) * 2
    flip = np.where(generator.random(batch_size) < config.hflip, -1.0, 1.0)
    theta = np.zeros((batch_size, 2, 3))
    theta[:, 0, 0] = np.cos(angle) / scale * flip
    theta[:, 0, 1] = -np.sin(angle) / scale
    theta[:, 1, 0] = np.sin(angle) / scale * flip
    theta[:, 1, 1] = np.cos(angle) / scale
    theta[:, :, 2] = shift
    theta = torch.as_tensor(theta, dtype=torch.float32, device=batch.device).repeat_interleave(frames, dim=0)
    flat = batch.reshape(batch_size * frames, 3, height, width)
    grid = F.affine_grid(theta, flat.shape, align_corners=False)
    flat = F.grid_sample(flat, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    batch = flat.reshape(batch_size, frames, 3, height, width)

    brightness = generator.uniform(1 - config.brightness, 1 + config.brightness, batch_size)
    contrast = generator.uniform(1 - config.contrast, 1 + config.contrast, batch_size)
    shape = (batch_size, 1, 1, 1, 1)
    brightness = torch.as_tensor(brightness, dtype=torch.float32, device=batch.device).view(shape)
    contrast = torch.as_tensor(contrast, dtype=torch.float32, device=batch.device).view(shape)
    clip_mean = batch.mean(dim=(1, 2, 3, 4), keepdim=True)
    batch = ((batch * brightness - clip_mean) * contrast + clip_mean).clamp(0, 1)

    out = []
    for clip in batch:
        if config.blur and generator.random() < config.blur:
            clip = _blur(clip, generator.uniform(*config.blur_sigma))
        if config.noise and generator.random() < config.noise:
            noise_std = generator.uniform(*config.noise_std)
            seed = int(generator.integers(0, 2 ** 31))
            noise_generator = torch.Generator(device=clip.device).manual_seed(seed)
            noise = torch.randn(clip.shape, generator=noise_generator, device=clip.device)
            clip = clip + noise * noise_std
        out.append(clip.clamp(0, 1))
    return torch.stack(out)
