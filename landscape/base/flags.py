"""CLI plumbing shared by every command: flags derived from config dataclasses (one source of names, defaults,
help and choices), one-line errors, and a parser that reports like that.

A config field declared with `option(...)` is a flag: `--eval-batch-size` for `eval_batch_size`, unless the field
names another. `add_config_args` adds a config's flags to a parser and `config_from_args` builds the config back
from the parsed flags, so a command never lists the fields by hand.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from landscape.base.errors import UserError, error_message

C = TypeVar("C")


# Flags renamed in 0.2 and 0.3 and removed in 0.7 (CHANGELOG.md): an old spelling is refused with its new name.
REMOVED_FLAGS = {"--vmax": "--loss-max", "--loss": "--metric", "--root": "--out", "--batch-size": "--eval-batch-size"}


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag gives one line on stderr (not the usage block) and exit status 2; a flag removed
    in 0.7 is named with the one to write instead."""

    def error(self, message: str) -> None:  # type: ignore[override]
        hints = [f"{old} is now {new}" for old, new in REMOVED_FLAGS.items()
                 if re.search(rf"(?<![\w-]){old}(?![\w-])", message)]
        hint = f"; {', '.join(hints)} (the old names were removed in 0.7)" if hints else ""
        self.exit(2, f"{self.prog}: error: {message}{hint} (see --help)\n")


class DefaultsFormatter(argparse.RawDescriptionHelpFormatter):
    """--help shows each option's default where it has one, and keeps the description's line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        d, text = action.default, action.help or ""
        if (not action.option_strings or d in (None, argparse.SUPPRESS) or isinstance(d, bool)
                or d == () or d == [] or "default" in text):
            return action.help
        shown = " ".join(map(str, d)) if isinstance(d, (list, tuple)) else str(d)
        return f"{text} (default: {shown.replace('%', '%%')})"


def option(default: Any = dataclasses.MISSING, help: str = "", *, flag: str | None = None,
           choices: Sequence[Any] | Callable[[], Sequence[Any]] | None = None,
           type: Callable[[str], Any] | None = None, group: str | None = None,
           metavar: str | None = None, const: Any = None,
           default_factory: Callable[[], Any] | Any = dataclasses.MISSING) -> Any:
    """A dataclass field that is also a command-line flag (see add_config_args). `flag` overrides the flag's
    name; `const` is the value of the flag given bare (`--scale-lr` for `--scale-lr linear`); `choices` may be a
    function giving them, called when a parser is built (a registry's names, extended after import)."""
    meta = {"cli": {"help": help, "flag": flag, "choices": choices, "type": type, "group": group,
                    "metavar": metavar, "const": const}}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def json_object(text: str) -> dict[str, Any]:
    """A flag value that is a JSON object, e.g. --model-kwargs '{"hidden": [256, 256]}'."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise argparse.ArgumentTypeError(f"not valid JSON: {text!r} (example: '{{\"hidden\": [256, 256]}}')") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def _value_type(hint: Any) -> tuple[Any, bool]:
    """(the type of one flag value, whether the field is a tuple of them), through `X | None`."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if typing.get_origin(hint) is tuple:
        return typing.get_args(hint)[0], True
    return hint, False


def add_config_args(parser: argparse.ArgumentParser, cls: type, skip: Iterable[str] = ()) -> None:
    """One flag per `option` field of the dataclass `cls`, except those in `skip`, with the field's default,
    help and choices. A bool field is a switch (a field that defaults to True is switched off by its flag, e.g.
    --no-progress; one that defaults to None has --x and --no-x, and None means "decide later"); a tuple field
    takes several values; a field without a default is a required flag."""
    hints, groups = typing.get_type_hints(cls), {}
    for f in dataclasses.fields(cls):
        meta = f.metadata.get("cli")
        if meta is None or f.name in skip:
            continue
        group = parser if meta["group"] is None else groups.setdefault(
            meta["group"], parser.add_argument_group(meta["group"]))
        name = meta["flag"] or "--" + f.name.replace("_", "-")
        kw: dict[str, Any] = {"dest": f.name, "help": meta["help"]}
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            kw["required"] = True
        else:
            kw["default"] = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        value_type, several = _value_type(hints[f.name])
        if value_type is bool and kw.get("default", False) is None:  # three states: --x, --no-x, or decided later
            kw["action"] = argparse.BooleanOptionalAction
        elif value_type is bool:
            kw["action"] = "store_false" if kw.get("default") else "store_true"
        else:
            choices = meta["choices"]() if callable(meta["choices"]) else meta["choices"]  # a registry's names now
            kw.update(type=meta["type"] or value_type, choices=choices, metavar=meta["metavar"])
            if several:
                kw["nargs"] = "+" if kw.get("default") else "*"
            elif meta["const"] is not None:
                kw.update(nargs="?", const=meta["const"])
        group.add_argument(name, **kw)


def config_parser(prog: str, description: str | None, add_help: bool, cls: type, skip: Iterable[str] = ()
                  ) -> ArgumentParser:
    """A command's parser: one-line errors, defaults shown in --help, and a flag per field of the config `cls`."""
    p = ArgumentParser(prog=prog, description=description, formatter_class=DefaultsFormatter, add_help=add_help)
    add_config_args(p, cls, skip=skip)
    return p


def config_from_args(cls: type[C], args: argparse.Namespace, **overrides: Any) -> C:
    """The dataclass `cls` from parsed flags, matched by field name, then `overrides`."""
    hints, values = typing.get_type_hints(cls), {}
    for f in dataclasses.fields(cls):
        if f.name in overrides or not hasattr(args, f.name):
            continue
        value = getattr(args, f.name)
        values[f.name] = tuple(value) if isinstance(value, list) and _value_type(hints[f.name])[1] else value
    return cls(**values, **overrides)


_created: list[str] = []  # folders check_writable made in this command: removed again if it is refused


def check_writable(folder: str) -> None:
    """Create `folder` if needed and fail early, before any work, if a file cannot be written in it. The folders
    made here are remembered, so that a command refused later (run_cli) leaves no empty folder behind."""
    new, parent = [], os.path.abspath(folder)
    while not os.path.exists(parent):
        new.append(parent)
        parent = os.path.dirname(parent)
    try:
        os.makedirs(folder, exist_ok=True)
        _created.extend(reversed(new))
        probe = os.path.join(folder, f".write_test_{os.getpid()}")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as exc:
        raise UserError(f"cannot write to output folder {folder} ({exc.strerror}); choose a writable --out") from None


def run_cli(main: Callable[[Sequence[str] | None], None], argv: Sequence[str] | None = None) -> None:
    """Run a CLI main. A UserError (raised on purpose where the input enters) becomes one line, `error: ...`, on
    stderr and exit status 2, and a collective that failed because another process died one line and status 1,
    unless LANDSCAPE_DEBUG is set; any other exception is a bug of ours and keeps its traceback."""
    _created.clear()
    try:
        main(argv)
    except UserError as exc:
        remove_empty_created()
        if os.environ.get("LANDSCAPE_DEBUG"):
            raise
        rank = os.environ.get("RANK")
        prefix = f"[rank {rank}] " if rank not in (None, "0") else ""
        print(f"{prefix}error: {error_message(exc)}", file=sys.stderr)
        _exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        _exit(130)
    except RuntimeError as exc:
        if not peer_lost(exc) or os.environ.get("LANDSCAPE_DEBUG"):
            raise
        reason = re.sub(r"^\[[^\]]*\]\s*", "", error_message(exc)).split(". ")[0][:160]  # gloo: "[file:line] ..."
        print(f"[rank {os.environ.get('RANK', '0')}] error: another process of this job stopped ({reason}); what "
              "was flushed or saved is kept: rerun the same command to resume (the trainer with --resume)",
              file=sys.stderr)
        _exit(1)
    if "TORCHELASTIC_RUN_ID" in os.environ:
        _exit(0)


def remove_empty_created() -> None:
    """Remove the folders check_writable made that are still empty (deepest first): a refused command leaves no
    empty --out behind, and never touches a folder that holds anything."""
    for folder in reversed(_created):
        try:
            os.rmdir(folder)
        except OSError:
            continue  # not empty (or gone): it stays, and so do its parents
    _created.clear()


def peer_lost(exc: BaseException) -> bool:
    """Whether a collective failed because another rank or node went away (its sockets closed), which is no bug
    of ours: gloo says "Connection closed by peer" (or reset), torch a DistNetworkError."""
    text = str(exc)
    return type(exc).__name__ == "DistNetworkError" or "Connection closed by peer" in text or \
        "Connection reset by peer" in text


def _exit(code: int) -> None:
    """sys.exit; a torchrun worker flushes and leaves at once instead.

    Every CLI main tears its process group down (landscape.runtime.distributed.cleanup_distributed) before this point,
    but gloo's worker threads can still hold their last work item (tensors); if the interpreter is being
    finalized when they drop it, the process aborts (SIGABRT, "terminate called without an active exception")
    and torchrun reports the finished job as failed: 1 in 10 two-process trainer runs here, even with a barrier
    before the teardown. Skipping finalization avoids that; every file of ours is closed, or written
    atomically, before this point."""
    if "TORCHELASTIC_RUN_ID" in os.environ:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
