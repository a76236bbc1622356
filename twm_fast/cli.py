"""What the commands (train, evaluate, report) share on their command line: a parser whose errors are
one line, options that may be given once, option types that follow the validation rules, and the
one-line refusal.

A refusal is ``error: <what was wrong and what to do>`` on stderr and exit code 2, never a traceback
(tests/test_cli_inputs.py runs the real parsers over generated inputs).
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from twm_fast.validation import Rule, close_names, shown

EXIT_REFUSED = 2


def printable(text: str) -> str:
    """`text` safe to print on any stream: a name the OS gave as undecodable bytes (a lone surrogate
    from `os.fsdecode`) shows as its escape, \\udcff, instead of failing the write."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


# What str.splitlines() breaks a line at, besides "\n": written as escapes (a path may hold a "\r").
_LINE_BREAKS = {ch: ch.encode("unicode_escape").decode() for ch in "\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"}


def one_line(text: str) -> str:
    """A message as one line: the lines of a nested error join up, other line breaks show as escapes."""
    text = " ".join(str(text).split("\n")).strip()
    return printable(text.translate(str.maketrans(_LINE_BREAKS)))


def describe_error(error: BaseException | str) -> str:
    """An error as a refusal shows it: an OSError from the system as its reason and path (the errno
    number says nothing to a user), anything else as its message."""
    if isinstance(error, OSError) and error.strerror and error.filename is not None:
        return f"{error.filename}: {error.strerror}"
    return str(error)


def refuse(error: BaseException | str) -> int:
    """Print `error` as the one line ``error: ...`` on stderr; returns the exit code of a refusal."""
    print(f"error: {one_line(describe_error(error))}", file=sys.stderr)
    return EXIT_REFUSED


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (argparse prints the usage first, over several lines) that
    suggest the option a misspelled one meant."""

    def error(self, message: str):
        if message.startswith("unrecognized arguments: "):
            options = [s for action in self._actions for s in action.option_strings]
            for token in message.split(": ", 1)[1].split():
                close = close_names(token.split("=", 1)[0], options) if token.startswith("-") else []
                if close:
                    message += f"; did you mean {', '.join(close)}?"
                    break
        self.exit(EXIT_REFUSED, f"error: {one_line(message)} (see {self.prog} --help)\n")


class Once(argparse.Action):
    """Store an option's value, refusing it a second time (argparse would keep the last one silently:
    `--game Pong --game Breakout` would train on Breakout without a word)."""

    def __call__(self, parser, namespace, values, option_string=None):
        seen = vars(namespace).setdefault("_options_given", {})
        if self.dest in seen:
            parser.error(f"{option_string} is given twice ({shown(seen[self.dest])} and {shown(values)}); "
                         "give it once")
        seen[self.dest] = values
        setattr(namespace, self.dest, values)


def ruled(rule: Rule) -> Callable[[str], Any]:
    """An argparse `type` that parses an option's text by a validation rule, so that e.g. --seed
    takes exactly the values the config's seed field does."""
    def parse(text: str) -> Any:
        try:
            return rule.parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{shown(text)}: must be {rule.describe()}") from None
    return parse


def path_text(text: str) -> str:
    """An argparse `type` for a path: not empty (which would mean the current directory) and
    without a NUL character (which no file system takes)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"{shown(text)}: give a path")
    if "\0" in text:
        raise argparse.ArgumentTypeError(f"{shown(text)}: a path cannot hold a NUL character")
    return text
