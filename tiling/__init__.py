"""Slide I/O and geometry: slides, tissue, patch grid, the zarr patch store, annotations, stitching."""
