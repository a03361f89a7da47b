"""``bfm serve``: a thin click layer over ``serve.server.run_server``."""

from __future__ import annotations

import click


@click.command("serve")
@click.option("--pack", default="bfm", show_default=True,
              help="BFM pack: a name under ROOT/models or a folder.")
@click.option("--root", help="Model root for pack names (default $INSIGHTFACE_BFM_ROOT or ~/.insightface).")
@click.option("--det-size", type=int, default=640, show_default=True, help="Detector input size.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; 127.0.0.1 is this machine only, 0.0.0.0 every interface.")
@click.option("--port", type=int, default=8000, show_default=True, help="TCP port (0: any free port).")
@click.option("--workers", type=int, default=1, show_default=True,
              help="Worker processes, each with its own copy of the networks.")
@click.option("--threads", type=int,
              help="Requests analysed at once per worker (default: the number of CPU cores).")
@click.option("--api-key", envvar="BFM_API_KEY", show_envvar=True,
              help="Require this key on every request but /healthz (Authorization: Bearer KEY or "
                   "X-API-Key: KEY).")
@click.option("--gallery-dir", type=click.Path(file_okay=False), default="galleries", show_default=True,
              help="Folder of the galleries (NAME.npz, the files `bfm gallery` reads and writes).")
@click.option("--max-upload-mb", type=float, default=10.0, show_default=True,
              help="Largest request body accepted; larger ones are answered 413.")
@click.option("--drain-timeout", type=float, default=30.0, show_default=True,
              help="Seconds given to requests in flight after SIGTERM or Ctrl-C before they are cut.")
@click.option("--access-log", is_flag=True, help="Log every request (uvicorn's access log).")
def serve(pack, root, det_size, host, port, workers, threads, api_key, gallery_dir, max_upload_mb,
          drain_timeout, access_log):
    """Serve BFM over HTTP: analyse, compare, galleries (enrol, search, list, remove), /healthz,
    /metrics and the OpenAPI page at /docs. SIGTERM finishes the requests in flight, then exits 0."""
    from .settings import ServeSettings, require_serving

    require_serving()
    settings = ServeSettings(pack=pack, root=root, det_size=det_size, host=host, port=port, workers=workers,
                             threads=threads, api_key=api_key or None, gallery_dir=gallery_dir,
                             max_upload_mb=max_upload_mb, drain_timeout=drain_timeout,
                             access_log=access_log).check()
    from .server import run_server

    def ready(url):
        key = "with an API key" if settings.api_key else "no API key"
        click.echo(f"bfm serve: pack {pack} at {url} ({workers} worker{'s' if workers > 1 else ''}, {key}); "
                   f"galleries in {gallery_dir}; docs at {url}/docs", err=True)
        if host not in ("127.0.0.1", "localhost", "::1") and not settings.api_key:
            click.echo(f"Warning: listening on {host} without --api-key: anyone who can reach it can use it",
                       err=True)

    run_server(settings, on_ready=ready)
