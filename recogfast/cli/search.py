"""``recogfast search``: the argument parser and the command (the work: recogfast.search)."""

from __future__ import annotations

import json
import os
import sys

from recogfast.cli.errors import UsageError, check_device, positive_int


def add_search_parser(sub) -> None:
    p = sub.add_parser("search", help="nearest gallery images of query images (JSON and an HTML page)")
    p.add_argument("model", help="a run folder (its best.pt) or a checkpoint")
    p.add_argument("--gallery", nargs="+", required=True, help="gallery images: files, folders or globs")
    p.add_argument("--query", nargs="+", required=True, help="query images: files, folders or globs")
    p.add_argument("--k", type=positive_int, default=8, help="neighbours of each query (default 8)")
    p.add_argument("--out", default="search", help="output folder: search.json and index.html (default ./search)")
    p.add_argument("--overwrite", action="store_true", help="replace the results --out already holds")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--device", default=None)
    p.set_defaults(handler=cmd_search)


def cmd_search(args) -> int:
    from recogfast.search import search, write_page

    check_device(args.device)
    if os.path.exists(os.path.join(args.out, "search.json")) and not args.overwrite:
        raise UsageError(f"{args.out} already holds search results: pass --overwrite to replace them, or another --out")
    try:
        result = search(args.model, args.gallery, args.query, args.k, args.batch_size, args.device,
                        progress=sys.stderr.isatty())
    except (FileNotFoundError, ValueError) as err:
        raise UsageError(str(err)) from None
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "search.json"), "w") as f:
        json.dump(result, f, indent=1)
    page = write_page(result, args.out)
    for entry in result["queries"][:20]:
        best = entry["neighbours"][0] if entry["neighbours"] else None
        print(f"{entry['query']}: " + (f"{best['file']} {best['similarity']:.4f}" if best else "no neighbour"))
    print(f"search: {page} ({len(result['queries'])} queries, gallery of {result['gallery_size']})")
    return 0



def register(parser, sub) -> None:
    add_search_parser(sub)
