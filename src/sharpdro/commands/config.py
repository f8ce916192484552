"""sharpdro config [SECTION] [--markdown]: every config key with its type, default, allowed values and help."""
from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("config", help="list every config key: type, default, allowed values, help",
                       description="Print the config schema: every key of SECTION (data, model, algorithm, train, "
                                   "eval, output, or a top-level key such as seed), or of all sections, with its "
                                   "type, default, allowed values and help. --markdown prints docs/config.md.")
    p.add_argument("section", nargs="?", help="one section (default: all)")
    p.add_argument("--markdown", action="store_true", help="a Markdown table per section (docs/config.md)")
    p.set_defaults(func=run)


def run(args) -> int:
    from sharpdro import configdoc

    print(configdoc.markdown(args.section) if args.markdown else configdoc.text(args.section), end="" if args.markdown else "\n")
    return 0
