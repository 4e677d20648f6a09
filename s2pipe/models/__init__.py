"""Torch modules only (spectral forecasting, land-cover mapping): filled by later issues."""
