"""Detectors: one module per family, each a pure polars function returning Signals."""

import warnings

# join_asof with `by` cannot verify per-group sortedness; every caller sorts first.
warnings.filterwarnings("ignore", message="Sortedness of columns cannot be checked")
