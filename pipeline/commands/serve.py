"""`slideaudit serve`: a local web page to explain uploaded images, and the audit reports."""
from __future__ import annotations

from pathlib import Path

import click

from pipeline import options


@click.command()
@click.option("--model", "model_dir", default=None, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Model folder (model.safetensors + config.json) for the upload page; optional with --reports.")
@click.option("--reports", default=None, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="An audit output folder (OUT of `slideaudit run`) to serve read-only under /reports/, "
                   "with a deep-zoom viewer of each slide at /reports/slides/<slide_id>/viewer/.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; the default accepts connections from this machine only.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--max-upload-mb", default=20.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Largest accepted upload.")
@click.option("--max-tiles", default=64, show_default=True, type=click.IntRange(min=1),
              help="Refuse images that need more model tiles than this.")
@click.option("--max-requests", default=4, show_default=True, type=click.IntRange(min=1),
              help="Explanations running or waiting at once; more are answered 503 (busy).")
@options.device
def serve(model_dir: Path | None, reports: Path | None, host: str, port: int, max_upload_mb: float,
          max_tiles: int, max_requests: int, device: str) -> None:
    """Serve a page where a user uploads an image, picks a class and a method, and sees the
    overlays and the top-5 classes (--model); with --reports, also the audit reports of that
    folder and a deep-zoom viewer of each slide with its maps."""
    from pipeline.server import ServeConfig
    from pipeline.server import serve as run_server

    if model_dir is None and reports is None:
        raise click.UsageError("give --model (the upload page), --reports (the reports and viewer) or both")
    if host not in ("127.0.0.1", "localhost", "::1"):
        click.echo(f"warning: listening on {host}: other machines can reach this page and upload images", err=True)
    config = ServeConfig(host=host, port=port, reports=reports, max_upload_mb=max_upload_mb,
                         max_tiles=max_tiles, max_requests=max_requests, device=device)
    run_server(model_dir, config)
