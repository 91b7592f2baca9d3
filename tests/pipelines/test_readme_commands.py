"""The README's commands as a new user types them, checked without running the long jobs.

Every `plexus ...` line of the README's shell blocks (continuations joined) must parse with the
real CLI from outside the repository root; its config must load with its overrides (so keys,
types and values are valid), bundled data paths must exist, `--space` files must exist, and
`serve --model NAME@ALIAS` must name a model that a bundled config registers. Every `make`
target the README names must exist. Placeholders (`<hash>`, `PATH`) skip only the file checks.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest
from plexus.pipelines import cli
from plexus.pipelines.config import bundled_config, config_path, load_job_config
from plexus.pipelines.retrieval import is_retrieval_config, load_retrieval_config

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
JOB_VERBS = {"ingest", "train", "run", "tune", "export", "promote"}


def _shell_lines() -> list[tuple[int, str]]:
    """(line number, command) of every line in ```bash blocks, continuations joined."""
    lines = README.read_text().splitlines()
    out: list[tuple[int, str]] = []
    in_block, pending, start = False, "", 0
    for number, line in enumerate(lines, 1):
        if line.startswith("```"):
            in_block = line.strip() in ("```bash", "```sh", "```shell") and not in_block
            continue
        if not in_block:
            continue
        text = line.split("  #", 1)[0].rstrip() if not pending else line.rstrip()
        if not pending:
            start = number
        if text.endswith("\\"):
            pending += text[:-1] + " "
            continue
        out.append((start, (pending + text).split("  #", 1)[0].strip()))
        pending = ""
    return out


def _without_optional(words: list[str]) -> list[str]:
    """A usage synopsis's words without its `[--option VALUE]` parts; a value with brackets of
    its own (`train.lr_drops=[16,24]`) is kept."""
    kept, depth = [], 0
    for word in words:
        if depth == 0 and not word.startswith("[") and word.count("[") == word.count("]"):
            kept.append(word)
            continue
        depth += word.count("[")
        if depth == 0:
            kept.append(word)
        depth -= word.count("]")
    return kept


def _plexus_commands() -> list[tuple[int, list[str]]]:
    commands = []
    for number, line in _shell_lines():
        words = shlex.split(line, comments=True) if line else []
        for i, word in enumerate(words):  # `nice .venv/bin/plexus ...`, `cd x && plexus ...`
            if word in ("plexus", ".venv/bin/plexus"):
                args = _without_optional(words[i + 1 :])
                if "&&" in args:
                    args = args[: args.index("&&")]
                if args and args != ["..."]:
                    commands.append((number, args))
                break
    return commands


COMMANDS = _plexus_commands()


def _data_root() -> str:
    return os.environ.get("PLEXUS_DATA") or str(ROOT.parent / "shared" / "data")


def _expand(word: str) -> str:
    return word.replace("$PLEXUS_DATA", _data_root()).replace("../shared/data", _data_root())


def _placeholder(word: str) -> bool:
    return bool(re.search(r"<[^>]+>|\bPATH\b|CONFIG|SPACE\.yaml|/data/day", word))


def test_the_readme_has_commands_to_check() -> None:
    verbs = {args[0] for _, args in COMMANDS if args}
    assert {"run", "ingest", "train", "bench", "serve", "data", "tune"} <= verbs, verbs
    assert len(COMMANDS) >= 30


@pytest.mark.parametrize(("line", "args"), COMMANDS, ids=[f"README:{n}" for n, _ in COMMANDS])
def test_a_readme_command_parses_and_its_config_loads(
    line: int, args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # not the repository root: bundled configs must not rely on it
    monkeypatch.setenv("PLEXUS_DATA", _data_root())
    where = f"README.md line {line}: plexus {' '.join(args)}"
    if any(_placeholder(a) for a in args) and args[:1] == ["tune"] and "CONFIG" in args:
        return  # the usage synopsis
    try:
        parsed = cli.build_parser().parse_args([_expand(a) for a in args])
    except SystemExit as exc:
        pytest.fail(f"{where}: the CLI refuses it (exit {exc.code})")
    if parsed.verb in JOB_VERBS and not _placeholder(parsed.config):
        path = config_path(parsed.config)
        if is_retrieval_config(path):
            config = load_retrieval_config(path, parsed.overrides)
        else:
            config = load_job_config(path, parsed.overrides)
        data = Path(config.data.path)
        bundled = str(data).startswith(_data_root())
        if bundled and not data.exists():
            pytest.fail(f"{where}: data.path {data} does not exist")
    space = getattr(parsed, "space", None)
    if space and not _placeholder(space):
        assert (ROOT / space).is_file(), f"{where}: --space {space} is not a file"
    if parsed.verb == "serve" and parsed.model and "@" in parsed.model:
        registered = set()
        for name in cli.bundled_config_names():
            path = bundled_config(name)
            if is_retrieval_config(path):
                registered.add(load_retrieval_config(path, []).export.registered_model)
        assert parsed.model.split("@")[0] in registered, (
            f"{where}: no bundled config registers {parsed.model.split('@')[0]} "
            f"(they register {sorted(registered)})"
        )


def test_every_make_target_the_readme_names_exists() -> None:
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.MULTILINE))
    named = {
        word
        for _, line in _shell_lines()
        if line.startswith("make ")
        for word in line.split()[1:]
        if not word.startswith("-") and "=" not in word
    }
    assert named, "the README names no make target"
    assert named <= targets, f"README names make targets the Makefile lacks: {named - targets}"
