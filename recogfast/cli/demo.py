"""``recogfast demo``: the Shapes196 end-to-end demo (recogfast.demo)."""

from __future__ import annotations


def register(parser, sub) -> None:
    from recogfast.demo import add_demo_args

    demo = sub.add_parser("demo", help="the Shapes196 end-to-end demo")
    add_demo_args(demo)
    demo.set_defaults(handler=cmd_demo)


def cmd_demo(args) -> int:
    from recogfast.demo import run_demo

    return run_demo(args)
