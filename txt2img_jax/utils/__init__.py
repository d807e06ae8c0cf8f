"""The floor everything stands on: run files (local or gs://), metric writers
and sample grids, host memory and multi-host setup, config helpers. Imports
nothing else of the package."""
