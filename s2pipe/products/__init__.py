"""Products that GIS users open: the one COG writer (``cog``), class, probability and change maps (``maps``),
and quick-look PNGs (``quicklook``)."""
