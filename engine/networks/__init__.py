"""The base networks (fast: real-time; span: the pretrained backbone; vsrt: the VSR-Transformer), their shared blocks and the registry
that builds them from a model card. Importing this package registers every architecture."""

from . import fast, span, vsrt  # noqa: F401  (registers the architectures)
from .registry import ARCHITECTURES, backbone_of, build_model, macs_per_lr_pixel, one_frame_of

__all__ = ["ARCHITECTURES", "backbone_of", "build_model", "macs_per_lr_pixel", "one_frame_of"]
