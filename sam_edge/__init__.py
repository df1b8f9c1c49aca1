"""sam-edge: Segment Anything from official checkpoints to fast, validated inference."""

__version__ = "0.1.0"
