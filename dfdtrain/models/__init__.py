"""Models: timm backbones (registry names and Keras-style aliases), temporal heads, clip backbones, the detectors,
fine-tuning policies, the loss, Grad-CAM explanations and the exported detector bundle."""

from dfdtrain.models.detector import ClipDetector, VideoDetector, build_detector, build_detector_from_config

__all__ = ["ClipDetector", "VideoDetector", "build_detector", "build_detector_from_config"]
