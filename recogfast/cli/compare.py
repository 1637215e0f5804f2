"""``recogfast compare``: one table of several runs' summaries."""

from __future__ import annotations

from recogfast.cli.errors import UsageError


def add_compare_parser(sub) -> None:
    cmp = sub.add_parser("compare", help="one table of several runs' summaries (e.g. the three CUBS placements)")
    cmp.add_argument("runs", nargs="+", help="run folders (holding summary.json), or sweep folders (their trials)")
    cmp.add_argument("--format", choices=("table", "md", "csv"), default="table")
    cmp.set_defaults(handler=cmd_compare)


def cmd_compare(args) -> int:
    from recogfast.engine.runs import compare_rows, format_table

    try:
        header, rows = compare_rows(args.runs, raw=args.format == "csv")
    except ValueError as err:
        raise UsageError(str(err)) from None
    print(format_table(header, rows, args.format))
    return 0


def register(parser, sub) -> None:
    add_compare_parser(sub)
