"""The ``aimc`` command line.

Each sub-package contributes its commands from a small ``commands.py`` module with a
``register(cli)`` function; this file only assembles them. Commands stay thin: they parse
arguments and a config, then call one library function.

    def register(cli: CommandLine) -> None:
        p = cli.command("data split", help="split a store into train/val", run=_run_split)
        p.add_argument("store")
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from aimc import __version__
from aimc.errors import UserError

# Modules that contribute commands, in the order their groups appear in --help.
COMMAND_MODULES = (
    "aimc.checkpoints.commands",
    "aimc.data.commands",
    "aimc.envs.commands",
    "aimc.train.commands",
    "aimc.train.embedder_commands",
    "aimc.agent.commands",
    "aimc.eval.commands",
    "aimc.tune.commands",
    "aimc.online.commands",
    "aimc.rl.commands",
    "aimc.quickstart",
)


class CommandLine:
    """Builds nested ``argparse`` sub-commands from paths such as ``"data convert steve1"``."""

    def __init__(self) -> None:
        self.parser = argparse.ArgumentParser(
            prog="aimc",
            description="Train, fine-tune, run and evaluate STEVE-1 style text-to-behaviour agents.",
        )
        self.parser.add_argument("--version", action="version", version=f"aimc {__version__}")
        self._subparsers = {(): self.parser.add_subparsers(dest="command", metavar="COMMAND")}
        self._parsers: dict[tuple[str, ...], argparse.ArgumentParser] = {(): self.parser}

    def group(self, path: str, help: str) -> argparse.ArgumentParser:
        """Declare a command group (e.g. ``"data"``) with its help text."""
        parts = tuple(path.split())
        if parts in self._parsers:  # created earlier by another module's sub-command: set its help now
            self._parsers[parts].description = help
            for choice in getattr(self._subparsers.get(parts[:-1]), "_choices_actions", []):
                if choice.dest == parts[-1]:
                    choice.help = help
        return self._get(parts, help)

    def _get(self, parts: tuple[str, ...], help: str | None = None) -> argparse.ArgumentParser:
        if parts in self._parsers:
            return self._parsers[parts]
        parent = self._get(parts[:-1])
        if parts[:-1] not in self._subparsers:
            self._subparsers[parts[:-1]] = parent.add_subparsers(dest="_".join(("cmd",) + parts[:-1]), metavar="COMMAND")
        p = self._subparsers[parts[:-1]].add_parser(parts[-1], help=help, description=help)
        p.set_defaults(_group=p)
        self._parsers[parts] = p
        return p

    def command(self, path: str, help: str, run: Callable[[argparse.Namespace], int | None]) -> argparse.ArgumentParser:
        """Declare a command; ``run(args)`` is called with the parsed arguments."""
        p = self._get(tuple(path.split()), help)
        p.set_defaults(_run=run, _group=None)
        return p


def _version(_: argparse.Namespace) -> int:
    import numpy
    import torch

    print(f"aimc {__version__}")
    print(f"python {sys.version.split()[0]}, torch {torch.__version__}, numpy {numpy.__version__}")
    cuda = torch.cuda.is_available()
    print(f"cuda: {'yes, ' + torch.cuda.get_device_name(0) if cuda else 'no'}")
    return 0


def build_cli() -> CommandLine:
    cli = CommandLine()
    cli.command("version", help="print versions of aimc, torch and the GPU it sees", run=_version)
    for name in COMMAND_MODULES:
        module = importlib.import_module(name)
        module.register(cli)
    return cli


def main(argv: Sequence[str] | None = None) -> int:
    cli = build_cli()
    args = cli.parser.parse_args(argv)
    run = getattr(args, "_run", None)
    if run is None:
        group = getattr(args, "_group", None) or cli.parser
        group.print_help()
        return 0 if argv is None or len(list(argv)) == 0 else 2
    try:
        rc = run(args)
    except (UserError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
