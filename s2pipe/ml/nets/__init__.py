"""Torch modules only, no I/O: the residual networks of spectral forecasting (``dynamics``) and the U-Net +
ConvLSTM of land-cover mapping (``unet``)."""
