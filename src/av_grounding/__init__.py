"""3D vehicle grounding: curation, training and evaluation of vision-language models."""

__version__ = "0.1.0"
