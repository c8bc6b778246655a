"""daamflow: Density Adaptive Attention (DAAM) heads on frozen encoders, as a reproducible workflow."""

__version__ = "0.1.0"
