"""The ``sharpdro`` command. Subcommands live in ``sharpdro.commands.<name>``; this file only dispatches.

Each command module defines ``add_parser(subparsers)`` and ``run(args) -> int``, and
imports heavy libraries (torch, matplotlib) inside ``run`` so ``sharpdro --help`` is fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# Order is the order shown by --help.
COMMANDS = (
    "quickstart",
    "prepare",
    "info",
    "show",
    "train",
    "evaluate",
    "predict",
    "sweep",
    "report",
    "plot",
    "cost",
    "sharpness",
    "bench",
    "convert",
    "export",
    "export_logs",
    "config",
)


def build_parser() -> argparse.ArgumentParser:
    from sharpdro.version import __version__

    parser = argparse.ArgumentParser(
        prog="sharpdro",
        description="SharpDRO and its baselines on photon-limited corruptions (Gaussian noise, shot noise, "
                    "impulse noise, speckle noise, JPEG).",
    )
    parser.add_argument("--version", action="version", version=f"sharpdro {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"sharpdro.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"sharpdro.commands.{name}":
                continue  # command not built yet
            raise
        module.add_parser(sub)
    return parser


def add_config_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    """The shared ``-c CONFIG --set k=v`` pair."""
    p.add_argument("-c", "--config", required=required,
                   help="YAML config path, or a shipped config name (quickstart, cifar10, cifar100, imagenet30)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config key (repeatable), e.g. --set train.lr=0.1")


MAX_ERROR_CHARS = 2000


def main(argv: list[str] | None = None) -> int:
    from sharpdro.errors import SharpDROError

    parser = build_parser()
    args = parser.parse_args(argv)
    _format_warnings(args.command or "")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except SharpDROError as exc:
        from sharpdro.errors import cut

        # bounded, whatever a file or value put in the message (a giant key, a long base chain)
        print(f"sharpdro {args.command}: error: {cut(exc, MAX_ERROR_CHARS)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sharpdro {args.command}: interrupted; finished results and checkpoints are kept "
              f"(train resumes with --resume).", file=sys.stderr)
        return 130


def _format_warnings(command: str) -> None:
    """Our own warnings print as one line each ("sharpdro train: warning: ..."), not with file:line."""
    import warnings

    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if "sharpdro" in str(filename):
            print(f"sharpdro {command}: warning: {message}", file=file or sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    warnings.showwarning = show


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
