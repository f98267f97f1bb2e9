"""MkDocs hooks: the reference pages that are generated from the code at every build, never copied by hand.

- ``reference/cli.md``: every ``prefrl`` subcommand and option, read from the argparse parser that
  :func:`prefrl.cli.main` builds.
- ``reference/config.md``: every configuration key with its type, default and docstring, read from the
  dataclasses of :mod:`prefrl.config` and, for text experiments, :class:`prefrl.text.rlhf.TextConfig` (a field
  whose docstring starts with ``Internal:`` is left out).
- ``results.md``: the committed benchmark tables of ``benchmarks/results/*.md`` embedded as they are,
  with the plots and CSV files beside them, and a summary of the machine and commit each came from.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import io
import itertools
import json
import logging
import math
import re
import sys
import typing
from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files

log = logging.getLogger("mkdocs.hooks.prefrl")

RESULTS = Path("benchmarks") / "results"
RESULT_ASSETS = (".png", ".svg", ".csv")


def _root(config: MkDocsConfig) -> Path:
    return Path(config.config_file_path).resolve().parent


def on_config(config: MkDocsConfig) -> MkDocsConfig:
    root = str(_root(config))
    if root not in sys.path:  # document the tree being built, not some other installed copy
        sys.path.insert(0, root)
    return config


def on_files(files: Files, config: MkDocsConfig) -> Files:
    root = _root(config)
    files.append(File.generated(config, "reference/cli.md", content=cli_reference()))
    files.append(File.generated(config, "reference/config.md", content=config_reference()))
    page, assets = results_page(root / RESULTS)
    files.append(File.generated(config, "results.md", content=page))
    for asset in assets:
        files.append(File.generated(config, f"results/{asset.name}", abs_src_path=str(asset)))
    return files


def on_serve(server: Any, config: MkDocsConfig, builder: Any) -> Any:
    root = _root(config)
    for path in (root / "prefrl" / "cli.py", root / "prefrl" / "config.py", root / "prefrl" / "text", root / RESULTS):
        server.watch(str(path))
    return server


# ------------------------------------------------------------------------------------------------
# Command line


class _Parser(Exception):
    """Carries the parser out of ``prefrl.cli.main`` the moment it would parse."""


def cli_parser() -> argparse.ArgumentParser:
    """The parser :func:`prefrl.cli.main` builds, captured at its ``parse_args`` call (nothing runs)."""
    from prefrl import cli

    def capture(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> Any:
        raise _Parser(self)

    original = argparse.ArgumentParser.parse_args
    argparse.ArgumentParser.parse_args = capture  # type: ignore[method-assign]
    try:
        cli.main(["--help"])
    except _Parser as e:
        return e.args[0]
    finally:
        argparse.ArgumentParser.parse_args = original  # type: ignore[method-assign]
    raise RuntimeError("prefrl.cli.main returned without parsing its arguments")


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """``(name, one-line help, parser)`` of each subcommand, in the order ``prefrl --help`` lists them."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            return [(name, helps.get(name, ""), sub) for name, sub in action.choices.items()]
    return []


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _option_row(action: argparse.Action) -> str:
    if action.option_strings:
        names = ", ".join(f"`{s}`" for s in action.option_strings)
        if action.nargs != 0:
            names += f" `{action.metavar or action.dest.upper()}`"
    else:
        names = f"`{action.metavar or action.dest}`" + (" (optional)" if action.nargs == "?" else "")
    meaning = action.help % {"default": action.default, "prog": "prefrl"} if action.help else ""
    if action.choices is not None:
        meaning += ("; " if meaning else "") + "one of " + ", ".join(f"`{c}`" for c in action.choices)
    if isinstance(action, argparse._AppendAction) and "repeatable" not in meaning:
        meaning += " (repeatable)"
    default = action.default
    absent = default is None or default is False or default == [] or default == argparse.SUPPRESS
    shown = "" if absent or action.nargs == 0 else f"`{default}`"
    return f"| {names} | {_cell(shown)} | {_cell(meaning)} |"


def cli_reference() -> str:
    parser = cli_parser()
    out = [
        "# Command line",
        "",
        "<!-- Generated at build time from the argparse parser in prefrl/cli.py; do not edit. -->",
        "",
        f"`prefrl` — {parser.description or ''} Every subcommand takes `--help`. A mistake in the",
        "arguments, the experiment file or a `--set` override ends in one line on stderr that names the",
        "problem and the fix, with exit status 2; an interrupted command exits with 130.",
        "",
        "| command | what it does |",
        "|---|---|",
    ]
    subs = _subcommands(parser)
    out += [f"| [`prefrl {name}`](#prefrl-{name}) | {_cell(help_)} |" for name, help_, _ in subs]
    for name, help_, sub in subs:
        out += ["", f"## `prefrl {name}` {{#prefrl-{name}}}", "", help_[:1].upper() + help_[1:] + ".", ""]
        out += ["```text", sub.format_usage().removeprefix("usage: ").strip(), "```", ""]
        for group in sub._action_groups:
            rows = [a for a in group._group_actions if not isinstance(a, argparse._HelpAction)]
            if not rows:
                continue
            title = {"positional arguments": "arguments"}.get(group.title or "", group.title or "options")
            out += [f"**{title[:1].upper()}{title[1:]}**", ""]
            out += ["| argument | default | meaning |", "|---|---|---|"]
            out += [_option_row(a) for a in rows]
            out += [""]
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------------------------
# Configuration


def attribute_docs(cls: type) -> dict[str, str]:
    """The docstrings written under a class's annotated attributes (``x: int = 0`` then ``\"\"\"...\"\"\"``)."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for stmt, following in itertools.pairwise(body):
        if (
            isinstance(stmt, ast.AnnAssign)
            and isinstance(stmt.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[stmt.target.id] = inspect.cleandoc(following.value.value)
    return docs


def toml_value(value: Any) -> str:
    """A default as it would be written in an experiment file."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        if math.isnan(value):
            return "nan"
        return repr(value)
    if isinstance(value, int):
        return f"{value:_}" if abs(value) >= 10_000 else str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no TOML form for {value!r}")


def _section_rows(obj: Any) -> tuple[list[str], list[tuple[str, Any]]]:
    """Table rows of ``obj``'s plain fields, and its nested sections ``(key, value)``."""
    cls = type(obj)
    docs = attribute_docs(cls)
    hints = typing.get_type_hints(cls)
    rows, nested = [], []
    for f in dataclasses.fields(obj):
        doc = docs.get(f.name, "")
        if doc.startswith("Internal:"):
            continue
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            nested.append((f.name, value))
            continue
        tp = _type_name(hints[f.name])
        rows.append(f"| `{f.name}` | `{tp}` | `{toml_value(value)}` | {_cell(_md_doc(doc)) or '—'} |")
    return rows, nested


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


_ROLE = re.compile(r":(?:func|meth|class|mod|attr|data|obj):`~?([^`]+)`")


def _md_doc(doc: str) -> str:
    """Docstring text for a Markdown table cell (reST double backticks are Markdown code spans already; a
    cross-reference role such as ``:func:`x``` becomes the code span ``x``)."""
    return " ".join(_ROLE.sub(r"``\1``", doc).split())


def config_reference() -> str:
    from prefrl import config

    root = config.TrainConfig()
    out = [
        "# Configuration",
        "",
        "<!-- Generated at build time from the dataclasses in prefrl/config.py; do not edit. -->",
        "",
        inspect.cleandoc(config.__doc__ or "").replace("\n", " ").replace(".  ", ". "),
        "",
        "Every key below is written in an experiment file the way the *default* column shows it; on the",
        "command line the same key is `--set section.key=value`, and the value is read as TOML (a bare word",
        "that is not valid TOML is taken as a string: `--set labels.sampler=uniform`).",
        "",
        "```toml",
        "# experiments/my_task.toml: name only what differs from the defaults",
        'name = "my-task"',
        "total_timesteps = 200_000",
        "",
        "[env]",
        'id = "Pendulum-v1"',
        "",
        "[labels]",
        "total = 300",
        'sampler = "uniform"',
        "```",
        "",
        "## Top level",
        "",
        "On the command line: `--set KEY=VALUE`.",
        "",
        "| key | type | default | meaning |",
        "|---|---|---|---|",
    ]
    rows, nested = _section_rows(root)
    out += rows
    for name, section in nested:
        sub_rows, deeper = _section_rows(section)
        if deeper:
            raise RuntimeError(f"config section [{name}] nests another section; teach docs/hooks.py to render it")
        doc = inspect.cleandoc(type(section).__doc__ or "")
        generated = doc.startswith(type(section).__name__ + "(")  # dataclass's generated signature, not prose
        out += ["", f"## `[{name}]`", ""]
        if doc and not generated:
            out += [doc, ""]
        out += [f"On the command line: `--set {name}.KEY=VALUE`.", ""]
        out += ["| key | type | default | meaning |", "|---|---|---|---|", *sub_rows]
    out += [
        "",
        "## With no experiment file",
        "",
        "`prefrl train` with no experiment file runs the CartPole quickstart: these values on top of the",
        "defaults above (`prefrl.config.QUICKSTART`).",
        "",
        "```toml",
        _toml_document(config.QUICKSTART).strip(),
        "```",
        *text_config_reference(),
    ]
    return "\n".join(out) + "\n"


def text_config_reference() -> list[str]:
    """The keys of a text experiment (``kind = "text"``), from :class:`prefrl.text.rlhf.TextConfig`."""
    from prefrl.text.rlhf import TextConfig

    out = [
        "",
        "## Text experiments {#text}",
        "",
        'An experiment file with `kind = "text"` at its top is a text run ([guide](../text.md)): `prefrl train`',
        "reads it with these keys and defaults instead of the ones above. `--set` works the same way.",
        "",
        "| key | type | default | meaning |",
        "|---|---|---|---|",
    ]
    rows, nested = _section_rows(TextConfig())
    out += rows
    for name, section in nested:
        sub_rows, deeper = _section_rows(section)
        if deeper:
            raise RuntimeError(f"text config section [{name}] nests another section; teach docs/hooks.py to render it")
        out += ["", f"### Text: `[{name}]` {{#text-{name}}}", "", f"On the command line: `--set {name}.KEY=VALUE`.", ""]
        out += ["| key | type | default | meaning |", "|---|---|---|---|", *sub_rows]
    return out


def _toml_document(data: dict[str, Any], table: str = "") -> str:
    """``data`` as TOML: plain keys first, then one ``[table]`` per non-empty dict."""
    buf = io.StringIO()
    if table:
        buf.write(f"\n[{table}]\n")
    for k, v in data.items():
        if not (isinstance(v, dict) and v):
            buf.write(f"{k} = {toml_value(v)}\n")
    for k, v in data.items():
        if isinstance(v, dict) and v:
            buf.write(_toml_document(v, f"{table}.{k}" if table else k))
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------
# Benchmark results

_LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)")


def results_page(directory: Path) -> tuple[str, list[Path]]:
    """The results page and the files (plots, CSVs) it links to, from the committed ``*.md`` tables."""
    tables = sorted(directory.glob("*.md"))
    assets = sorted(p for p in directory.iterdir() if p.suffix in RESULT_ASSETS) if directory.is_dir() else []
    out = [
        "# Results",
        "",
        "<!-- Generated at build time from benchmarks/results/; do not edit. -->",
        "",
        "Every table below is a file in `benchmarks/results/`, written by the script it names and committed",
        "with the code; this page embeds them as they are. Rerun a script to regenerate its table.",
        "Each was measured on the machine and at the commit it states:",
        "",
        "| result | machine and commit, as the file states them |",
        "|---|---|",
    ]
    sections = []
    for path in tables:
        text = path.read_text()
        title = _title(text) or path.stem
        anchor = f"results-{path.stem}"
        machine = _machine_line(text)
        if machine is None:
            log.warning(
                "benchmarks/results/%s states no machine and commit (a paragraph starting 'Machine:'); "
                "have its script write them",
                path.name,
            )
            machine = "not stated"
        out.append(f"| [{_cell(title)}](#{anchor}) | {_cell(machine)} |")
        sections += ["", *_embed(text, anchor, path.stem, assets)]
    if not tables:
        log.warning("no benchmark tables in %s", directory)
    return "\n".join(out + sections) + "\n", assets


def _title(text: str) -> str | None:
    m = re.search(r"^# (.+)$", text, flags=re.M)
    return m.group(1).strip() if m else None


def _machine_line(text: str) -> str | None:
    """The paragraph that starts with ``Machine:``, as one line."""
    for para in re.split(r"\n\s*\n", text):
        if para.lstrip().startswith("Machine:"):
            return " ".join(para.split()).removeprefix("Machine:").strip()
    return None


def _embed(text: str, anchor: str, stem: str, assets: list[Path]) -> list[str]:
    """A results file with its headings one level down, links to its own plots and data kept working."""
    names = {a.name for a in assets}
    out, fenced, titled = [], False, False
    for line in text.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            if not titled and line.startswith("# "):
                line = f"#{line} {{#{anchor}}}"
                titled = True
            else:
                line = "#" + line
        elif not fenced:
            line = _LINK.sub(lambda m: _relink(m, names), line)
        out.append(line)
    own = [a.name for a in assets if a.stem == stem and a.name not in text]
    for name in own:
        if name.endswith((".png", ".svg")):
            out += ["", f"![{stem}](results/{name})"]
    data = [n for n in own if n.endswith(".csv")]
    if data:
        out += ["", "Raw data: " + ", ".join(f"[`{n}`](results/{n})" for n in data) + "."]
    return out


def _relink(m: re.Match[str], names: set[str]) -> str:
    bang, label, target = m.groups()
    if "://" in target or target.startswith("#"):
        return m.group(0)
    name = Path(target).name
    if name in names:
        return f"{bang}[{label}](results/{name})"
    return f"{label} (`{target}`)"  # a file beside the tables that the site does not carry
