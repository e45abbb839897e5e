"""The docs are checked against the code, so they cannot drift apart silently.

* Every fenced block marked ```` ```bash runnable ```` in ``README*.md`` and ``docs/**/*.md`` is
  executed, in document order, in one temporary working directory where ``aimc quickstart`` has
  already run once on the built-in world. ``aimc`` there is a shim that adds ``--fast`` to any
  command that accepts it, so heavy commands stay small. Plain ```` ```bash ```` blocks (installs,
  commands that need Minecraft or a GPU) are not executed but still checked as below.
* Every ``aimc …`` command in a shell block or in inline code names a real command, and every
  ``--flag`` it uses exists on that command (read from the argparse tree of ``aimc.cli.build_cli``).
* Every config override ``section.key=value`` and every config YAML block names keys that exist in
  the config dataclasses (``aimc.train.config.TrainConfig`` and the other ``*Config`` classes).
* ``docs/cli.md`` equals what ``scripts/gen_cli_docs.py`` writes now.
* The README's set-up section has exactly two commands (quickstart; tests), the test command is the
  one ``.ci/run`` runs, and the Chinese README says the same.
* Relative links point to files that exist.
* Every guide ``docs/NAME.md`` has a Chinese twin ``docs/zh/NAME.md`` (and no Chinese page lacks
  its original); the two link to each other at the top and name the same ``aimc`` commands with the
  same flags, the same ``--flags`` in inline code and the same config keys (overrides, dotted keys
  in inline code, keys of YAML blocks). The twin of the generated ``docs/cli.md`` names the same
  commands; its options are read from the English reference. All the checks above run over both
  languages, since ``docs/zh/*.md`` is part of ``docs/**/*.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import importlib.util
import os
import pkgutil
import re
import shlex
import stat
import subprocess
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SHELL_LANGS = {"bash", "sh", "shell", "console"}
YAML_LANGS = {"yaml", "yml"}
OPERATORS = {"&&", "||", ";", "|", "&", "(", ")", ";;", "|&"}
# Flags of other tools that docs may mention on their own in inline code.
FOREIGN_FLAGS = {
    "--help", "--version", "--nproc_per_node", "--nproc-per-node", "--nnodes", "--node_rank",
    "--master_addr", "--master_port", "--rdzv_endpoint", "--rdzv-endpoint", "--rdzv_backend",
    "--standalone", "--logdir", "--port", "--bind_all", "--host", "--no-deps", "--upgrade",
    "--index-url", "--extra-index-url", "--user", "--editable",
}
# Which config dataclass a command's dotted overrides go to (checked when importable; other
# commands' overrides must exist in at least one *Config dataclass of aimc).
COMMAND_CONFIGS = {
    ("train",): "aimc.train.config:TrainConfig",
    ("prior", "train"): "aimc.train.prior:PriorTrainConfig",
    ("mineclip", "train"): "aimc.train.mineclip:MineCLIPTrainConfig",
}


# --------------------------------------------------------------------------- markdown


@dataclass
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    tags: tuple[str, ...]
    text: str

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"

    @property
    def runnable(self) -> bool:
        return self.lang in SHELL_LANGS and "runnable" in self.tags


def doc_files() -> list[Path]:
    files = sorted(REPO.glob("README*.md"))
    docs = REPO / "docs"
    if docs.is_dir():
        files += sorted(docs.rglob("*.md"))
    return files


FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")


def parse_markdown(path: Path) -> tuple[list[Block], str]:
    """Fenced blocks of a page, and the page's text outside them (for inline code)."""
    blocks: list[Block] = []
    prose: list[str] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            prose.append(lines[i])
            i += 1
            continue
        fence = m["fence"]
        info = m["info"].strip().split()
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i][len(m["indent"]):] if lines[i].startswith(m["indent"]) else lines[i])
            i += 1
        i += 1  # closing fence
        lang = info[0].lower() if info else ""
        blocks.append(Block(path, start + 1, lang, tuple(t.lower() for t in info[1:]), "\n".join(body)))
        prose.append("")
    return blocks, "\n".join(prose)


INLINE = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)")


def inline_codes(prose: str) -> list[str]:
    return [m.group(2).strip() for m in INLINE.finditer(prose)]


@functools.lru_cache(maxsize=None)
def all_blocks() -> tuple[Block, ...]:
    return tuple(b for p in doc_files() for b in parse_markdown(p)[0])


# --------------------------------------------------------------------------- shell


def logical_lines(text: str) -> list[str]:
    """Shell lines with continuations joined, prompts, comments-only lines and heredoc bodies dropped."""
    out: list[str] = []
    cur = ""
    heredoc: str | None = None
    for raw in text.splitlines():
        if heredoc is not None:
            if raw.strip() == heredoc:
                heredoc = None
            continue
        line = raw.rstrip()
        if not cur and line.lstrip().startswith("$ "):
            line = line.lstrip()[2:]
        if line.endswith("\\"):
            cur += line[:-1] + " "
            continue
        cur += line
        if cur.strip() and not cur.strip().startswith("#"):
            out.append(cur.strip())
            m = re.search(r"<<-?\s*['\"]?(\w+)['\"]?", cur)
            if m:
                heredoc = m.group(1)
        cur = ""
    if cur.strip():
        out.append(cur.strip())
    return out


def split_commands(line: str) -> list[list[str]]:
    """One shell line -> simple commands (token lists), split at ``&&``, ``|``, ``;`` …"""
    lex = shlex.shlex(line, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    lex.commenters = "#"
    try:
        tokens = list(lex)
    except ValueError:  # unbalanced quotes: fall back to whitespace
        tokens = line.split()
    cmds: list[list[str]] = [[]]
    for t in tokens:
        if t in OPERATORS:
            cmds.append([])
        else:
            cmds[-1].append(t)
    return [c for c in cmds if c]


def aimc_argv(cmd: list[str]) -> list[str] | None:
    """The arguments after ``aimc`` (or ``python -m aimc.cli``, ``torchrun … -m aimc.cli``)."""
    i = 0
    while i < len(cmd) and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", cmd[i]):  # VAR=value prefixes
        i += 1
    cmd = cmd[i:]
    if not cmd:
        return None
    if cmd[0] == "aimc":
        return cmd[1:]
    for j in range(len(cmd) - 1):
        if cmd[j] == "-m" and cmd[j + 1] in ("aimc", "aimc.cli"):
            return cmd[j + 2:]
    return None


def aimc_commands_in(text: str) -> list[list[str]]:
    return [argv for line in logical_lines(text) for c in split_commands(line) if (argv := aimc_argv(c)) is not None]


# --------------------------------------------------------------------------- CLI model


@functools.lru_cache(maxsize=None)
def cli_root() -> argparse.ArgumentParser:
    from aimc.cli import build_cli

    return build_cli().parser


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            return dict(a.choices)
    return {}


def all_parsers(parser: argparse.ArgumentParser | None = None, path: tuple[str, ...] = ()):
    parser = parser or cli_root()
    yield path, parser
    for name, sub in subcommands(parser).items():
        yield from all_parsers(sub, path + (name,))


@functools.lru_cache(maxsize=None)
def all_flags() -> frozenset[str]:
    return frozenset(s for _, p in all_parsers() for s in p._option_string_actions)


def resolve(argv: list[str]) -> tuple[tuple[str, ...], argparse.ArgumentParser, list[str]]:
    """Walk sub-commands; returns (path, parser, remaining args). Raises LookupError."""
    parser = cli_root()
    path: tuple[str, ...] = ()
    i = 0
    while i < len(argv):
        subs = subcommands(parser)
        tok = argv[i]
        if not subs or tok.startswith("-"):
            break
        if tok not in subs:
            raise LookupError(
                f"`{' '.join(('aimc',) + path + (tok,))}`: no such command "
                f"(`{' '.join(('aimc',) + path)}` has: {', '.join(subs)})"
            )
        parser = subs[tok]
        path += (tok,)
        i += 1
    return path, parser, argv[i:]


OVERRIDE = re.compile(r"^(?P<key>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)=(?P<value>.*)$", re.S)


def check_aimc_argv(argv: list[str]) -> list[str]:
    """Problems with one ``aimc …`` invocation as written in the docs (empty list = fine)."""
    try:
        path, parser, rest = resolve(argv)
    except LookupError as e:
        return [str(e)]
    problems = []
    name = "aimc " + " ".join(path) if path else "aimc"
    if path and subcommands(parser) and not any(t in ("-h", "--help") for t in rest) and rest:
        problems.append(f"`{name}` is a command group; it needs one of: {', '.join(subcommands(parser))}")
    options = parser._option_string_actions
    positionals = [a for a in parser._actions if not a.option_strings and not isinstance(a, argparse._SubParsersAction)]
    only_overrides = bool(positionals) and all("=" in str(a.metavar or "") for a in positionals)
    skip = 0
    for tok in rest:
        if skip:
            skip -= 1
            continue
        if tok == "--":
            break
        if tok.startswith("--") or re.match(r"^-[A-Za-z]", tok):
            flag = tok.split("=", 1)[0]
            if flag not in options:
                problems.append(f"`{name}` has no option {flag} (it has: {', '.join(sorted(options))})")
            elif "=" not in tok:
                nargs = options[flag].nargs
                skip = 1 if nargs is None or nargs == "?" else (nargs if isinstance(nargs, int) else 1)
            continue
        m = OVERRIDE.match(tok)
        if only_overrides and not m and not tok.startswith(("$", "<")):
            problems.append(f"`{name} … {tok}`: this command takes only KEY=VALUE overrides as arguments")
        if m and ("." in m["key"] or path in COMMAND_CONFIGS):
            err = check_config_key(m["key"], path)
            if err:
                problems.append(f"`{name} … {tok}`: {err}")
    return problems


# --------------------------------------------------------------------------- configs


@functools.lru_cache(maxsize=None)
def config_classes() -> dict[str, type]:
    """Every ``*Config`` dataclass defined in the aimc package (modules that fail to import are
    skipped: optional extras such as MineRL)."""
    import aimc

    found: dict[str, type] = {}
    for info in pkgutil.walk_packages(aimc.__path__, "aimc."):
        try:
            mod = importlib.import_module(info.name)
        except Exception:  # noqa: BLE001 - optional dependency missing
            continue
        for obj in vars(mod).values():
            if (
                isinstance(obj, type)
                and dataclasses.is_dataclass(obj)
                and obj.__name__.endswith("Config")
                and obj.__module__ == mod.__name__
            ):
                found[f"{obj.__module__}:{obj.__name__}"] = obj
    return found


def _load_class(spec: str) -> type | None:
    mod, _, name = spec.partition(":")
    try:
        return getattr(importlib.import_module(mod), name)
    except (ImportError, AttributeError):
        return None


def _dataclass_args(tp) -> list[type]:
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return [tp]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return [a for t in typing.get_args(tp) for a in _dataclass_args(t)]
    return []


def _is_open_mapping(tp) -> bool:
    if tp is typing.Any or typing.get_origin(tp) is dict or tp is dict:
        return True
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return any(_is_open_mapping(t) for t in typing.get_args(tp))
    return False


def key_exists(cls: type, keys: list[str]) -> bool:
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    if keys[0] not in fields:
        return False
    if len(keys) == 1:
        return True
    tp = hints[keys[0]]
    if _is_open_mapping(tp):
        return True
    return any(key_exists(sub, keys[1:]) for sub in _dataclass_args(tp))


def check_config_key(dotted: str, command: tuple[str, ...] = ()) -> str | None:
    keys = dotted.split(".")
    spec = COMMAND_CONFIGS.get(command)
    cls = _load_class(spec) if spec else None
    if cls is not None:
        return None if key_exists(cls, keys) else f"{dotted!r} is not a key of {cls.__name__}"
    classes = root_config_classes()
    if any(key_exists(c, keys) for c in classes):
        return None
    return f"{dotted!r} is not a key of any config ({', '.join(sorted(c.__name__ for c in classes))})"


@functools.lru_cache(maxsize=None)
def root_config_classes() -> tuple[type, ...]:
    """Configs that are not a section of another config (TrainConfig, PriorTrainConfig, …):
    dotted keys are paths from one of these."""
    classes = list(config_classes().values())
    nested = set()
    for cls in classes:
        for tp in typing.get_type_hints(cls).values():
            nested.update(_dataclass_args(tp))
    return tuple(c for c in classes if c not in nested)


def check_yaml_config(block: Block, tmp: Path) -> str | None:
    """A YAML block whose top-level keys are a config's fields must load as that config.

    Blocks that share no key with any config (metadata), and evaluation suites, are not configs."""
    from aimc.config import load_config
    from aimc.eval.suite import SuiteError, parse_suite

    try:
        data = yaml.safe_load(block.text)
    except yaml.YAMLError as e:
        return f"not valid YAML: {e}"
    if not isinstance(data, dict) or not data:
        return None
    try:
        parse_suite(data, block.id)
        return None  # a valid evaluation suite (its tasks/episodes/seed are no config's)
    except SuiteError:
        pass
    keys = {str(k) for k in data} - {"base"}
    errors: list[str] = []
    closest: tuple[int, type] | None = None
    for cls in config_classes().values():
        fields = {f.name for f in dataclasses.fields(cls) if f.init}
        shared = len(keys & fields)
        if shared and (closest is None or shared > closest[0]):
            closest = (shared, cls)
        if keys <= fields:
            f = tmp / "block.yaml"
            f.write_text(block.text, encoding="utf-8")
            try:
                load_config(cls, f)
                return None
            except Exception as e:  # noqa: BLE001 - reported if no config accepts the block
                errors.append(f"does not load as {cls.__name__}: {e}")
    if errors:
        return "; ".join(errors)
    if closest is not None and 2 * closest[0] >= len(keys):
        fields = {f.name for f in dataclasses.fields(closest[1]) if f.init}
        return f"keys {sorted(keys - fields)} are not fields of {closest[1].__name__}"
    return None


# --------------------------------------------------------------------------- tests: static


def _shell_block_params():
    return [pytest.param(b, id=b.id) for b in all_blocks() if b.lang in SHELL_LANGS]


@pytest.mark.parametrize("block", _shell_block_params())
def test_shell_block_commands_exist(block: Block):
    problems = [f"{block.id}: {p}" for argv in aimc_commands_in(block.text) for p in check_aimc_argv(argv)]
    assert not problems, "\n".join(problems)


def test_inline_aimc_commands_flags_and_overrides_exist():
    problems = []
    for path in doc_files():
        _, prose = parse_markdown(path)
        where = path.relative_to(REPO)
        for code in inline_codes(prose):
            if code.startswith("aimc ") or code == "aimc":
                for c in split_commands(code):
                    argv = aimc_argv(c)
                    if argv is not None:
                        problems += [f"{where}: `{code}`: {p}" for p in check_aimc_argv(argv)]
            elif re.match(r"^--[A-Za-z][\w-]*(=\S*)?( \S+)?$", code):
                flag = code.split()[0].split("=")[0]
                if flag not in all_flags() and flag not in FOREIGN_FLAGS:
                    problems.append(f"{where}: `{code}`: no aimc command has the option {flag}")
            elif (m := OVERRIDE.match(code)) and "." in m["key"] and " " not in code:
                err = check_config_key(m["key"])
                if err:
                    problems.append(f"{where}: `{code}`: {err}")
    assert not problems, "\n".join(problems)


def test_yaml_config_blocks_match_schema(tmp_path: Path):
    problems = []
    for block in all_blocks():
        if block.lang in YAML_LANGS:
            err = check_yaml_config(block, tmp_path)
            if err:
                problems.append(f"{block.id}: {err}")
    assert not problems, "\n".join(problems)


def test_python_blocks_compile():
    for block in all_blocks():
        if block.lang in ("python", "py"):
            compile(block.text, block.id, "exec")


def _load_gen_cli_docs():
    spec = importlib.util.spec_from_file_location("gen_cli_docs", REPO / "scripts" / "gen_cli_docs.py")
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    return mod


def test_cli_reference_is_up_to_date():
    gen = _load_gen_cli_docs()
    page = REPO / "docs" / "cli.md"
    assert page.exists(), "docs/cli.md is missing: run python scripts/gen_cli_docs.py"
    assert page.read_text(encoding="utf-8") == gen.render(), (
        "docs/cli.md is out of date with the CLI: run python scripts/gen_cli_docs.py"
    )


def test_cli_reference_lists_every_command_and_option():
    text = (REPO / "docs" / "cli.md").read_text(encoding="utf-8")
    for path, parser in all_parsers():
        if path:
            assert f"## `aimc {' '.join(path)}`" in text
        for a in parser._actions:
            if a.option_strings and a.help != argparse.SUPPRESS and not isinstance(a, argparse._HelpAction):
                assert a.option_strings[0] in text, f"aimc {' '.join(path)} {a.option_strings[0]} missing"


SETUP_HEADINGS = {"README.md": "## Set up", "README.zh-CN.md": "## 安装与运行"}


def _section(path: Path, heading: str) -> str:
    text = path.read_text(encoding="utf-8")
    assert heading in text.splitlines(), f"{path.name} has no '{heading}' section"
    after = text.split(heading + "\n", 1)[1]
    return re.split(r"^## ", after, maxsplit=1, flags=re.M)[0]


def ci_test_command() -> str:
    """The test command ``.ci/run`` runs in the checkout: the first command line (continuations
    joined) that runs ``python -m pytest``, after any ``VAR=value`` prefixes. Later lines (a fresh
    clone's conformance run in a sub-shell) are not the README's command."""
    for line in logical_lines((REPO / ".ci" / "run").read_text()):
        tokens = line.split()
        while tokens and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", tokens[0]):
            tokens = tokens[1:]
        if tokens[:3] == ["python", "-m", "pytest"]:
            return " ".join(tokens)
    raise AssertionError(".ci/run runs no `python -m pytest` command")


@pytest.mark.parametrize("name", sorted(SETUP_HEADINGS))
def test_readme_setup_has_exactly_the_two_commands(name: str, tmp_path: Path):
    section = _section(REPO / name, SETUP_HEADINGS[name])
    blocks = [b for b in parse_markdown_text(section, tmp_path) if b.lang in SHELL_LANGS]
    commands = [ln for b in blocks for ln in logical_lines(b.text)]
    assert len(commands) == 2, f"{name}: the set-up section must have exactly two commands, found {commands}"
    quick, tests = commands
    assert quick == "pip install -e . && aimc quickstart", quick
    ci = ci_test_command()
    assert ci == "python -m pytest -q", f".ci/run's last command is {ci!r}"
    assert tests == f'pip install -e ".[test]" && {ci}', tests
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    extras = pyproject.split("[project.optional-dependencies]", 1)[-1].split("\n[", 1)[0]
    assert re.search(r"^test\s*=", extras, re.M), "pyproject.toml has no [test] extra"
    assert all(not b.runnable for b in blocks), "install commands are not runnable blocks"


def parse_markdown_text(text: str, tmp: Path) -> list[Block]:
    f = tmp / "section.md"
    f.write_text(text, encoding="utf-8")
    return parse_markdown(f)[0]


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def test_relative_links_resolve():
    missing = []
    for path in doc_files():
        _, prose = parse_markdown(path)
        prose = INLINE.sub("", prose)
        for target in LINK.findall(prose):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                continue
            file_part = target.split("#", 1)[0]
            if file_part and not (path.parent / file_part).exists():
                missing.append(f"{path.relative_to(REPO)}: link to {target} (no such file)")
    assert not missing, "\n".join(missing)


def _command_signatures(path: Path) -> set[tuple[tuple[str, ...], frozenset[str]]]:
    blocks, prose = parse_markdown(path)
    argvs = [a for b in blocks if b.lang in SHELL_LANGS for a in aimc_commands_in(b.text)]
    argvs += [a for code in inline_codes(prose) if code.startswith("aimc ") for a in aimc_commands_in(code)]
    sigs = set()
    for argv in argvs:
        try:
            cmd, _, rest = resolve(argv)
        except LookupError:
            continue  # reported by the other tests
        sigs.add((cmd, frozenset(t.split("=", 1)[0] for t in rest if t.startswith("--"))))
    return sigs


def _zh_pairs():
    zh = REPO / "docs" / "zh"
    return [pytest.param(p, id=str(p.relative_to(REPO))) for p in sorted(zh.glob("*.md"))] if zh.is_dir() else []


def _english_guides() -> list[Path]:
    return sorted((REPO / "docs").glob("*.md"))


# Pages written by a script: their twin is checked for the same commands only (the options are
# listed, with their help texts, by the English page that the script keeps up to date).
GENERATED_PAGES = {"cli.md"}


def _flags_named(path: Path) -> set[str]:
    """Options of aimc commands (shell blocks and inline commands) and options named on their own
    in inline code (``--fast``)."""
    blocks, prose = parse_markdown(path)
    flags = {f for _, fs in _command_signatures(path) for f in fs}
    for code in inline_codes(prose):
        if re.match(r"^--[A-Za-z][\w-]*(=\S*)?( \S+)?$", code):
            flags.add(code.split()[0].split("=")[0])
    return flags


def _yaml_keys(data, prefix: str = "") -> set[str]:
    keys: set[str] = set()
    if isinstance(data, dict):
        for k, v in data.items():
            key = f"{prefix}{k}"
            keys.add(key)
            keys |= _yaml_keys(v, key + ".")
    return keys


def _config_keys_named(path: Path) -> set[str]:
    """Config keys a page names: overrides ``key=value`` given to aimc commands, dotted overrides
    and dotted config keys (``optim.lr``) in inline code, and the keys of config-like YAML blocks."""
    blocks, prose = parse_markdown(path)
    keys: set[str] = set()
    argvs = [a for b in blocks if b.lang in SHELL_LANGS for a in aimc_commands_in(b.text)]
    argvs += [a for code in inline_codes(prose) if code.startswith("aimc ") for a in aimc_commands_in(code)]
    for argv in argvs:
        for tok in argv:
            m = OVERRIDE.match(tok)
            if m and "." in m["key"]:
                keys.add(m["key"])
    for code in inline_codes(prose):
        m = OVERRIDE.match(code)
        if m and "." in m["key"] and " " not in code:
            keys.add(m["key"])
        elif re.match(r"^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)+$", code) and check_config_key(code) is None:
            keys.add(code)
    for b in blocks:
        if b.lang in YAML_LANGS:
            try:
                keys |= {f"yaml:{k}" for k in _yaml_keys(yaml.safe_load(b.text))}
            except yaml.YAMLError:
                continue  # reported by test_yaml_config_blocks_match_schema
    return keys


def _show_sigs(s) -> list[str]:
    return sorted(f"aimc {' '.join(c)} {' '.join(sorted(f))}".strip() for c, f in s)


@pytest.mark.parametrize("en_page", [pytest.param(p, id=str(p.relative_to(REPO))) for p in _english_guides()])
def test_every_guide_has_a_chinese_twin(en_page: Path):
    zh_page = REPO / "docs" / "zh" / en_page.name
    assert zh_page.exists(), f"docs/{en_page.name} has no Chinese version: write {zh_page.relative_to(REPO)}"
    zh_text = zh_page.read_text(encoding="utf-8")
    head = "\n".join(zh_text.splitlines()[:6])
    assert f"](../{en_page.name})" in head, f"{zh_page.relative_to(REPO)} does not link to ../{en_page.name} at the top"
    if en_page.name not in GENERATED_PAGES:
        en_head = "\n".join(en_page.read_text(encoding="utf-8").splitlines()[:6])
        assert f"](zh/{en_page.name})" in en_head, f"docs/{en_page.name} does not link to zh/{en_page.name} at the top"


@pytest.mark.parametrize("zh_page", _zh_pairs())
def test_chinese_pages_match_their_english_originals(zh_page: Path):
    en_page = REPO / "docs" / zh_page.name
    assert en_page.exists(), f"{zh_page.relative_to(REPO)} translates docs/{zh_page.name}, which does not exist"
    where = f"{zh_page.relative_to(REPO)} is out of sync with {en_page.relative_to(REPO)}"
    en, zh = _command_signatures(en_page), _command_signatures(zh_page)
    if zh_page.name in GENERATED_PAGES:
        en_cmds, zh_cmds = {c for c, _ in en}, {c for c, _ in zh}
        assert en_cmds == zh_cmds, (
            f"{where}: commands only in English: {sorted(' '.join(c) for c in en_cmds - zh_cmds)}; "
            f"only in Chinese: {sorted(' '.join(c) for c in zh_cmds - en_cmds)}"
        )
        return
    assert en == zh, f"{where}: only in English: {_show_sigs(en - zh)}; only in Chinese: {_show_sigs(zh - en)}"
    en_flags, zh_flags = _flags_named(en_page), _flags_named(zh_page)
    assert en_flags == zh_flags, (
        f"{where}: options only in English: {sorted(en_flags - zh_flags)}; only in Chinese: {sorted(zh_flags - en_flags)}"
    )
    en_keys, zh_keys = _config_keys_named(en_page), _config_keys_named(zh_page)
    assert en_keys == zh_keys, (
        f"{where}: config keys only in English: {sorted(en_keys - zh_keys)}; only in Chinese: {sorted(zh_keys - en_keys)}"
    )


def _nav_pages(node) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [p for v in node.values() for p in _nav_pages(v)]
    if isinstance(node, list):
        return [p for v in node for p in _nav_pages(v)]
    return []


def test_site_navigation_lists_every_page_in_both_languages():
    """mkdocs.yml's nav (when the optional site config is there) lists every page of docs/, the
    Chinese ones included, and nothing that does not exist."""
    config = REPO / "mkdocs.yml"
    if not config.exists():
        pytest.skip("no mkdocs.yml")
    nav = set(_nav_pages(yaml.safe_load(config.read_text(encoding="utf-8")).get("nav", [])))
    pages = {p.relative_to(REPO / "docs").as_posix() for p in (REPO / "docs").rglob("*.md")}
    assert not pages - nav, f"mkdocs.yml's nav does not list: {sorted(pages - nav)}"
    assert not nav - pages, f"mkdocs.yml's nav lists pages that do not exist: {sorted(nav - pages)}"


# --------------------------------------------------------------------------- tests: runnable

SHIM = '''\
import os
import sys

from aimc.cli import build_cli, main


def _subs(p):
    for a in p._actions:
        if a.__class__.__name__ == "_SubParsersAction":
            return a.choices
    return {{}}


def _argv():
    argv = sys.argv[1:]
    parser = build_cli().parser
    for tok in argv:
        subs = _subs(parser)
        if tok.startswith("-") or tok not in subs:
            break
        parser = subs[tok]
    if "--fast" in parser._option_string_actions and "--fast" not in argv and not ({{"-h", "--help"}} & set(argv)):
        argv = argv + ["--fast"]
    return argv


if __name__ == "__main__":  # worker processes (spawn) import this file again
    argv = _argv()
    if argv == {done!r} and os.path.exists({marker!r}):
        print("aimc " + " ".join(argv) + ": already run once for this docs test session")
        sys.exit(0)
    sys.exit(main(argv))
'''

QUICKSTART_ARGV = ["quickstart", "--fast"]


@dataclass
class Workdir:
    root: Path
    env: dict[str, str] = field(default_factory=dict)


def _run(script: str, wd: Workdir, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", script],
        cwd=wd.root, env=wd.env, capture_output=True, text=True, timeout=timeout,
    )


@pytest.fixture(scope="session")
def docs_workdir(tmp_path_factory) -> Workdir:
    """A temp working dir where `aimc quickstart --fast` has run once, shared by every block
    (blocks run in document order; the repository's scripts/ and benchmarks/ are linked in)."""
    root = tmp_path_factory.mktemp("docs-run")
    (root / "home").mkdir()
    bindir = root / ".bin"
    bindir.mkdir()
    marker = root / ".bin" / "quickstart-done"
    shim = bindir / "aimc"
    shim.write_text(f"#!{sys.executable}\n" + SHIM.format(done=QUICKSTART_ARGV, marker=str(marker)))
    shim.chmod(shim.stat().st_mode | stat.S_IXUSR)
    env = {
        k: v for k, v in os.environ.items()
        if k in ("LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT", "AIMC_CONFORMANCE_DIR", "PYTHONPATH")
    }
    env.update(
        PATH=os.pathsep.join([str(bindir), str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        HOME=str(root / "home"),
        MPLBACKEND="Agg",
        PYTHONUNBUFFERED="1",
        # the aimc of this checkout, whichever copy the environment has installed
        PYTHONPATH=os.pathsep.join([str(REPO / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]),
        OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"),
    )
    # Docs run repository scripts by relative path (python scripts/..., benchmarks/...).
    for name in ("scripts", "benchmarks"):
        if (REPO / name).is_dir():
            (root / name).symlink_to(REPO / name, target_is_directory=True)
    wd = Workdir(root, env)
    if "quickstart" not in subcommands(cli_root()):
        pytest.fail("the docs have runnable blocks but `aimc quickstart` does not exist")
    res = _run("aimc " + " ".join(QUICKSTART_ARGV), wd, timeout=900)
    assert res.returncode == 0, f"aimc {' '.join(QUICKSTART_ARGV)} failed:\n{(res.stdout + res.stderr)[-4000:]}"
    marker.write_text("ok")
    return wd


def _shell_tokens(text: str) -> tuple[tuple[str, ...], ...]:
    """A shell block's commands without comments or layout, to compare two blocks."""
    return tuple(tuple(c) for line in logical_lines(text) for c in split_commands(line))


def _runnable_params():
    """Runnable blocks in document order. A block of a Chinese page that runs the same commands as
    a runnable block of its English original (only the comments translated) has been run there
    and is not run again; its commands are still checked like every other block's."""
    english: dict[str, set] = {}
    for b in all_blocks():
        if b.runnable and b.path.parent == REPO / "docs":
            english.setdefault(b.path.name, set()).add(_shell_tokens(b.text))
    params = []
    for b in all_blocks():
        if not b.runnable:
            continue
        if b.path.parent == REPO / "docs" / "zh" and _shell_tokens(b.text) in english.get(b.path.name, set()):
            continue
        params.append(pytest.param(b, id=b.id))
    return params


@pytest.mark.slow
@pytest.mark.parametrize("block", _runnable_params())
def test_runnable_block_executes(block: Block, docs_workdir: Workdir):
    for line in logical_lines(block.text):
        assert not re.search(r"\b(pip|apt|apt-get|conda)\s+install\b", line), (
            f"{block.id}: install commands belong in a plain ```bash block, not a runnable one"
        )
    res = _run(block.text, docs_workdir, timeout=300)
    assert res.returncode == 0, (
        f"{block.id}: exited with {res.returncode} in {docs_workdir.root}\n"
        f"--- block ---\n{block.text}\n--- output (tail) ---\n{(res.stdout + res.stderr)[-4000:]}"
    )


def test_every_figure_says_where_it_was_measured():
    """An image in the docs is followed (within a few lines) by where it was measured/produced."""
    problems = []
    for path in doc_files():
        lines = path.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            for target in re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", line):
                after = " ".join(lines[i + 1:i + 8]).lower()
                if not re.search(r"measured|produced|测得|测量", after):
                    problems.append(f"{path.relative_to(REPO)}:{i + 1}: figure {target} does not say where it was measured")
    img = REPO / "docs" / "img"
    used = " ".join(p.read_text(encoding="utf-8") for p in doc_files())
    for f in sorted(img.glob("*")) if img.is_dir() else []:
        if f.name not in used:
            problems.append(f"docs/img/{f.name} is not used by any page")
    assert not problems, "\n".join(problems)


def test_chinese_pages_are_exact_about_prompt_language():
    """Chinese readers are told that the official MineCLIP text encoder only knows English, so
    Chinese prompts need an embedder trained on Chinese captions (like the built-in world's)."""
    pages = [REPO / "README.zh-CN.md", *sorted((REPO / "docs" / "zh").glob("*.md"))]
    missing = [str(p.relative_to(REPO)) for p in pages if p.exists() and "只用英文训练" not in p.read_text(encoding="utf-8")]
    assert not missing, f"these pages do not say that the official MineCLIP text encoder was trained on English only: {missing}"
