#!/usr/bin/env python3
"""Write docs/cli.md from the ``aimc`` command line itself.

    python scripts/gen_cli_docs.py           # rewrite docs/cli.md
    python scripts/gen_cli_docs.py --check   # exit 1 if docs/cli.md is out of date

The page is built by walking the argparse tree that ``aimc.cli.build_cli()`` assembles, so
every command, argument, default and help text comes from the code. ``tests/test_docs.py``
fails when the committed page differs from what this script writes.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CLI_MD = REPO_ROOT / "docs" / "cli.md"

HEADER = """\
# CLI reference

Every `aimc` command with its arguments. This page is written by
`python scripts/gen_cli_docs.py` from the parsers that `aimc.cli.build_cli()` builds, and
`tests/test_docs.py` fails when it is out of date: edit the help texts in the code, then re-run the
script. Run any command with `--help` for the same information in the terminal. Config presets and
dotted overrides such as `optim.lr=1e-5` are explained in [training.md](training.md).
"""


def walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser, str]]:
    """Yield ``(path, parser, help)`` for every (sub)command below ``parser``, depth first, in
    the order the commands were declared."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield (path + (name,), sub, helps.get(name, ""))
                yield from walk(sub, path + (name,))


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _metavar(action: argparse.Action) -> str:
    if action.metavar is not None:
        mv = action.metavar if isinstance(action.metavar, str) else " ".join(action.metavar)
    elif action.choices is not None:
        mv = "{" + ",".join(str(c) for c in action.choices) + "}"
    elif action.option_strings:
        mv = action.dest.upper()
    else:
        mv = action.dest
    n = action.nargs
    if n is None:
        return mv
    if n == "?":
        return f"[{mv}]"
    if n == "*":
        return f"[{mv} ...]"
    if n == "+":
        return f"{mv} [{mv} ...]"
    if n == argparse.REMAINDER:
        return "..."
    if isinstance(n, int):
        return " ".join([mv] * n)
    return mv


def _takes_value(action: argparse.Action) -> bool:
    return action.nargs != 0


def _help(action: argparse.Action, prog: str) -> str:
    if not action.help or action.help == argparse.SUPPRESS:
        return ""
    params = dict(vars(action), prog=prog)
    for k in list(params):
        if params[k] is argparse.SUPPRESS:
            del params[k]
    if params.get("choices") is not None:
        params["choices"] = ", ".join(str(c) for c in params["choices"])
    try:
        text = action.help % params
    except (KeyError, TypeError, ValueError):
        text = action.help
    return " ".join(text.split())


def _default(action: argparse.Action) -> str:
    d = action.default
    if d is None or d is argparse.SUPPRESS or action.nargs == 0:
        return ""
    if isinstance(d, (list, tuple)):
        return " ".join(str(x) for x in d) if d else ""
    return str(d)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _arguments(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [
        a
        for a in parser._actions
        if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)) and a.help != argparse.SUPPRESS
    ]


def _usage(path: tuple[str, ...], parser: argparse.ArgumentParser) -> str:
    parts = ["aimc", *path]
    if subcommands(parser):
        parts.append("COMMAND")
    args = _arguments(parser)
    if any(a.option_strings for a in args):
        parts.append("[options]")
    for a in args:
        if not a.option_strings:
            parts.append(_metavar(a))
    return " ".join(parts)


def _anchor(path: tuple[str, ...]) -> str:
    return "aimc-" + "-".join(path)


def render(cli=None) -> str:
    """The whole page as a string (``cli`` defaults to ``aimc.cli.build_cli()``)."""
    if cli is None:
        from aimc.cli import build_cli

        cli = build_cli()
    root: argparse.ArgumentParser = cli.parser
    entries = list(walk(root))
    out = [HEADER]

    out.append("## Commands\n")
    out.append("| command | what it does |")
    out.append("| --- | --- |")
    for path, _, help_text in entries:
        out.append(f"| [`aimc {' '.join(path)}`](#{_anchor(path)}) | {_cell(' '.join(help_text.split()))} |")
    out.append("")

    out.append("Options that every invocation accepts: `aimc --help`, `aimc --version`.\n")

    for path, parser, help_text in entries:
        title = "aimc " + " ".join(path)
        out.append(f'<a id="{_anchor(path)}"></a>\n')
        out.append(f"## `{title}`\n")
        desc = parser.description or help_text
        if desc:
            out.append(" ".join(desc.split()) + "\n")
        out.append("```text\n" + _usage(path, parser) + "\n```\n")
        subs = subcommands(parser)
        if subs:
            out.append("Sub-commands: " + ", ".join(f"[`{n}`](#{_anchor(path + (n,))})" for n in subs) + ".\n")
        args = _arguments(parser)
        if args:
            out.append("| argument | default | description |")
            out.append("| --- | --- | --- |")
            for a in args:
                if a.option_strings:
                    name = ", ".join(a.option_strings)
                    if _takes_value(a):
                        name += " " + _metavar(a)
                else:
                    name = _metavar(a)
                default = _default(a)
                out.append(
                    f"| `{_cell(name)}` | {('`' + _cell(default) + '`') if default else ''} | {_cell(_help(a, title))} |"
                )
            out.append("")
        if parser.epilog:
            out.append(parser.epilog.strip() + "\n")
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only check that docs/cli.md is up to date")
    ap.add_argument("--out", type=Path, default=CLI_MD, help="where to write (default: docs/cli.md)")
    args = ap.parse_args(argv)
    text = render()
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
        if current != text:
            print(f"{args.out} is out of date: run python scripts/gen_cli_docs.py", file=sys.stderr)
            return 1
        print(f"{args.out} is up to date")
        return 0
    from aimc.utils.io import atomic_write_text

    atomic_write_text(args.out, text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
