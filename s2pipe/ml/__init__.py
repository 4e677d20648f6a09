"""Machine-learning support for the model stages :mod:`s2pipe.forecast` and :mod:`s2pipe.mapping`: training
pixels (``pixels``), label rasters and spatial splits (``labels``), accuracy metrics (``metrics``), the per-pixel
tree mappers (``trees``), the model-file format (``weights``), and the torch networks without I/O (``nets``)."""
