"""How the command line is read: a usage error is one line, a negative number is a value.

click shows a usage error as the usage, a hint and the message in a panel; ``ducto`` says
``error: <message> (see: ducto <command> --help)`` on one line and exits 2, like every
other failure (docs/cli.md). click also reads ``-5`` as an option; a command built with
:class:`NumbersAsValues` reads it as an argument, so the argument's own check can say what
is wrong with it.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import typer
from typer.core import TyperCommand, TyperGroup

from ducto.cli._session import ExitCode, fail

_NUMBER = re.compile(r"-\d+(\.\d*)?")


class Ducto(TyperGroup):
    """The ``ducto`` group: click's errors become one line on stderr and exit 2."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
        try:
            # not standalone: click raises its errors here instead of printing them
            code = super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
        except typer.TyperException as error:
            _usage_error(error)
        except typer.Abort:
            _exit(fail("aborted", ExitCode.REFUSED))
        # a command returns None; typer.Exit (and --help, --version) return their code
        sys.exit(code if isinstance(code, int) else 0)


def _usage_error(error: typer.TyperException) -> NoReturn:
    if type(error).__name__ == "NoArgsIsHelpError":  # the help is already printed
        sys.exit(ExitCode.USAGE)
    ctx = getattr(error, "ctx", None)
    see = f" (see: {ctx.command_path} --help)" if ctx is not None else ""
    # click's own codes: 2 for a usage error, 1 for the rest (an unreadable file)
    code = ExitCode.USAGE if error.exit_code == ExitCode.USAGE else ExitCode.REFUSED
    _exit(fail(error.format_message() + see, code))


def _exit(exit: typer.Exit) -> NoReturn:
    sys.exit(exit.exit_code)


class NumbersAsValues(TyperCommand):
    """A command whose arguments may be negative numbers: ``credits add alice -5``.

    click takes every word that starts with ``-`` for an option. When each such word of
    the command line is a number or a known option, unknown options are let through as
    arguments, so ``-5`` reaches the argument's check; otherwise click reads it as usual
    and names the unknown option.
    """

    # ctx: click's Context, which typer vendors privately (typer.Context is a subclass)
    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        known = {name for param in self.get_params(ctx) for name in _names(param)}
        words = args[: args.index("--")] if "--" in args else args
        dashed = (word.split("=", 1)[0] for word in words if word[:1] == "-" and len(word) > 1)
        ctx.ignore_unknown_options = all(
            _NUMBER.fullmatch(word) or word in known for word in dashed
        )
        return super().parse_args(ctx, args)


def _names(param: object) -> list[str]:
    return [*getattr(param, "opts", ()), *getattr(param, "secondary_opts", ())]
