"""dfdtrain: distributed training toolkit for deepfake video detection."""

__version__ = "0.1.0"
