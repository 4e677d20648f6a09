"""Synthetic data: the embedded demo region (``demo``, also reachable as :mod:`s2pipe.demo`), STAC items in
Earth Search's form (``items``), tiny COG scenes for tests and benchmarks (``scenes``), an HTTP server that
spoils a seeded share of the range requests (``faulty_server``), and the spectral-dynamics experiment of the
forecasting paper (``dynamics``)."""
