"""tierkit: compress a network into one model per device tier with Lightning and Hydra."""

__version__ = "0.1.0"
