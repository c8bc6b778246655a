"""daamflow: Density Adaptive Attention (DAAM) heads on frozen encoders, as a reproducible workflow."""

from pathlib import Path

__version__ = "0.1.0"
# the repository checkout this package's source lives in (src layout: <checkout>/workflow/daamflow); its config/ and
# profiles/ folders are found from here
CHECKOUT = Path(__file__).resolve().parents[2]
