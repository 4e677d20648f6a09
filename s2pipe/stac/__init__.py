"""STAC input: catalog profiles (``catalog``), the one adapter that normalises items of any supported catalog
(``items``), the asset check before the cube reads (``assets``), and a real local STAC API (``server``).

The search stage itself is :mod:`s2pipe.search`."""
