"""Models: timm backbones (registry names and Keras-style aliases), temporal heads, the video detector,
fine-tuning policies and the embedding cache."""

from dfdtrain.models.detector import VideoDetector, build_detector, build_detector_from_config

__all__ = ["VideoDetector", "build_detector", "build_detector_from_config"]
