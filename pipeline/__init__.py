"""Orchestration: stage functions, the Dask graph, config, caching/resume, the CLI."""
