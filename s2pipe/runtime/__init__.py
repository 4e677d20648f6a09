"""Where and how a run executes: Dask clusters (``cluster``), where inference runs and with how many CPU threads
(``placement``), object-store locations for inputs and outputs (``objectstore``), and progress lines
(``progress``)."""
