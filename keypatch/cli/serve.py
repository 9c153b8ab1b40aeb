"""``keypatch serve``: a Label Studio ML backend that pre-annotates tasks with their key patches."""

from __future__ import annotations

import argparse
import os
import sys
import threading

from keypatch.cli import values as v
from keypatch.cli.common import add_device, add_model, add_results


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``serve``."""
    from keypatch.proposers import available

    p = sub.add_parser(
        "serve", help="a Label Studio ML backend: key patches as brush pre-annotations, the model kept warm",
        description="Serve Label Studio's ML backend protocol (/health, /setup, /predict, /webhook) on HOST:PORT. "
                    "Each task's image (Label Studio upload or local-files URL, http(s) URL, or a file under "
                    "--document-root) gets its key patches as a BrushLabels mask at its own resolution, the loss "
                    "L as the prediction score. Images are batched across concurrent requests and every result "
                    "goes into OUT/results.sqlite (keypatch export and report read it; stored images are served "
                    "from it). Connect it in the project's Settings > Model; docs/serve.md.")
    p.add_argument("--host", default="127.0.0.1", type=v.host, help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=v.positive_int, default=9090, help="port (default 9090)")
    p.add_argument("--ratio", type=v.ratio, default=None, help="fraction of patches to keep, in (0, 1] (required)")
    p.add_argument("--strategy", default="greedy", choices=sorted(available()), metavar="STRATEGY",
                   help=f"proposal strategy: {', '.join(available())} (default greedy)")
    add_model(p)
    add_device(p)
    add_results(p)
    p.add_argument("--seed", type=v.seed, default=0, help="seed for randomised strategies")
    p.add_argument("--score", choices=["loss", "gain"], default="loss",
                   help="a prediction's score: loss, L after the proposal (default; high: images the MAE rebuilds "
                        "worst from their key patches); gain, what the proposed patches lower L by (from the "
                        "annotated patches' L, or the empty set's): sort by it to label where the next patches "
                        "help most")
    p.add_argument("--batch-size", type=v.positive_int, default=8, help="most images per model call (default 8)")
    p.add_argument("--label-studio-url", default=None, type=v.http_url,
                   help="Label Studio's address, for its /data/upload and /data/local-files URLs; given here, the "
                        "host is pinned and /setup cannot change it (default: what Label Studio's /setup call says)")
    p.add_argument("--api-key", default=None, type=v.token,
                   help="a Label Studio token for those URLs, sent only to --label-studio-url, which it needs "
                        "(default: the token of the /setup call that named the host)")
    p.add_argument("--document-root", type=v.existing_dir, default=None,
                   help="read local-files URLs and plain paths under this folder from disk")
    p.add_argument("--basic-auth-user", default=os.environ.get("BASIC_AUTH_USER") or None, type=v.secret,
                   help="HTTP basic user that every route but /health needs (default: $BASIC_AUTH_USER; give the "
                        "same in Label Studio's model settings)")
    p.add_argument("--basic-auth-pass", default=os.environ.get("BASIC_AUTH_PASS") or None, type=v.secret,
                   help="its password (default: $BASIC_AUTH_PASS, which keeps it out of the process list)")
    p.add_argument("--server-name", action="append", default=[], type=v.host, metavar="NAME",
                   help="a host name clients reach this backend by (repeatable); IP addresses, localhost and this "
                        "machine's name are always served, other names in the Host header are refused")
    p.add_argument("--fetch-host", action="append", default=None, type=v.host, metavar="HOST",
                   help="fetch http(s) images only from this host (repeatable) and Label Studio's; for a backend "
                        "that faces a network (default: any host but link-local addresses)")
    p.add_argument("--max-image-mb", type=v.positive_float, default=64, help="largest image file fetched (MB)")
    p.add_argument("--image-timeout", type=v.positive_float, default=30,
                   help="seconds for one image's fetch: connection, redirects and reads together (default 30)")
    p.add_argument("--max-request-mb", type=v.positive_float, default=16, help="largest request body (MB)")
    p.add_argument("--request-timeout", type=v.positive_float, default=300,
                   help="seconds a /predict waits for its images; a task not done by then gets an error and is "
                        "served from the store when asked again (default 300)")
    p.add_argument("--max-in-flight", type=v.positive_int, default=16,
                   help="requests served at once; the others wait their turn (default 16)")
    p.add_argument("--print-config", action="store_true",
                   help="print the labelling config the backend fits and exit")
    p.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE", type=v.option,
                   help="strategy option, repeatable (as for keypatch propose)")
    p.add_argument("-v", "--verbose", action="count", default=0, help="log each request on stderr")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``serve`` for parsed ``args`` (until interrupted)."""
    from keypatch.serve import LABELSTUDIO_CONFIG, Backend, BackendServer, ImageSource
    from keypatch.serve.http import exposure_warning

    if args.print_config:
        print(LABELSTUDIO_CONFIG, end="")
        return 0
    if args.ratio is None:
        raise ValueError("--ratio is required to serve")
    if bool(args.basic_auth_user) != bool(args.basic_auth_pass):
        raise ValueError("basic authentication needs both a user and a password (--basic-auth-user and "
                         "--basic-auth-pass, or BASIC_AUTH_USER and BASIC_AUTH_PASS)")
    auth = (args.basic_auth_user, args.basic_auth_pass) if args.basic_auth_user else None
    source = ImageSource(args.label_studio_url, args.api_key, args.document_root, int(args.max_image_mb * 2**20),
                         args.image_timeout, tuple(args.fetch_host) if args.fetch_host is not None else None)
    warning = exposure_warning(args.host, auth)
    if warning:
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    backend = Backend(args.ratio, args.strategy, args.model, args.out, device=args.device, seed=args.seed,
                      batch_size=args.batch_size, source=source, thread=False, score=args.score,
                      **dict(args.option))
    server = BackendServer(backend, args.host, args.port, int(args.max_request_mb * 2**20), auth=auth,
                           server_names=args.server_name, threads=args.max_in_flight,
                           request_timeout=args.request_timeout)
    print(f"keypatch serve: {backend.model_version} at {server.url} (results in {backend.store_path}"
          f"{'; basic authentication on' if auth else ''})", file=sys.stderr, flush=True)
    http = threading.Thread(target=server.serve_forever, name="keypatch-http", daemon=True)
    http.start()
    try:
        backend.serve_batches()  # the model works in the main thread: torch computes fastest there
    finally:
        server.shutdown()
        server.server_close()
    return 0
