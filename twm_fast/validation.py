"""What a value of a setting may be: the rules `Config` declares beside each field, and the one-line
errors that refuse the rest.

A rule checks a value (from a preset, a saved config.json, a checkpoint or code) and parses the text
of a `name=value` override or a command-line option into one:

- ``Integer(lo, hi)``: an int in [lo, hi]; "1e5" and "100_000" parse, "2.5", "inf" and True do not.
- ``Real(lo, hi, open_lo=, open_hi=)``: a float in the interval; NaN never, infinity only where the
  interval is closed at ``math.inf`` (e.g. the replay temperature, where inf is uniform sampling).
- ``Choice(*values)``, ``Flag()``, ``Sizes(lo, hi)`` (a tuple of layer widths) and
  ``Pattern(regex, what)`` (a name such as a device).

A refused value raises `ConfigError` (a ValueError, so callers that catch ValueError keep working)
whose message is one line: the setting, the value, what it may be, and a valid example. Commands print
it as ``error: ...`` and exit with code 2.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
import re
from typing import Any

# A value shown in an error is cut to this many characters (a pasted megabyte stays one short line).
SHOWN_CHARS = 60


class ConfigError(ValueError):
    """A setting that cannot work; the message is one line naming it, its value and what it may be."""


def shown(value: Any) -> str:
    """A value as an error message shows it: its repr on one line, cut to SHOWN_CHARS characters."""
    text = repr(value)  # repr escapes newlines, control characters and lone surrogates
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS - 3] + "..."


def close_names(name: str, choices) -> list[str]:
    """Up to three of `choices` that look like `name` (a misspelling's likely meaning)."""
    return difflib.get_close_matches(str(name), [str(c) for c in choices], n=3, cutoff=0.6)


def _number(x: float) -> str:
    """Bounds as people read them: 1,000,000,000 rather than 1000000000; inf stays inf."""
    if isinstance(x, int) or (math.isfinite(x) and x == int(x) and abs(x) < 1e15):
        return f"{int(x):,}"
    return f"{x:g}"


class Rule:
    """What one setting may be. `check` takes a value and returns it normalised (e.g. a list of
    widths as a tuple); `parse` reads the text of an override. Both raise ValueError with the reason
    (`describe()` completes the message: "must be <describe()>")."""

    def check(self, value: Any) -> Any:
        raise NotImplementedError

    def parse(self, text: str) -> Any:
        return self.check(text)

    def describe(self) -> str:
        raise NotImplementedError

    def refusal(self, label: str, value: Any, reason: str | None = None, default: Any = None) -> ConfigError:
        """The one-line error for `value` of the setting called `label` (a field or an option)."""
        hint = f"; {reason}" if reason else ""
        known = f" (default {format_value(default)})" if default is not None else ""
        return ConfigError(f"{label}={shown(value)}: must be {self.describe()}{known}{hint}")


class Integer(Rule):
    def __init__(self, lo: int, hi: int):
        self.lo, self.hi = lo, hi

    def describe(self) -> str:
        return f"an integer in [{_number(self.lo)}, {_number(self.hi)}]"

    def check(self, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError("not an integer")
        if not isinstance(value, numbers.Integral):
            if not (math.isfinite(value) and float(value).is_integer()):
                raise ValueError("not an integer")
        value = int(value)
        if not self.lo <= value <= self.hi:
            raise ValueError("out of range")
        return value

    def parse(self, text: str) -> int:
        try:
            return self.check(int(text))
        except ValueError:
            pass
        try:
            number = float(text)  # "1e5"; "2.5" and "inf" parse but fail the check
        except ValueError:
            raise ValueError("not a number") from None
        return self.check(number)


class Real(Rule):
    """A float in an interval; `hi=math.inf` with `open_hi=False` admits infinity itself."""

    def __init__(self, lo: float, hi: float, *, open_lo: bool = False, open_hi: bool = False, note: str = ""):
        self.lo, self.hi, self.open_lo, self.open_hi, self.note = lo, hi, open_lo, open_hi, note

    def describe(self) -> str:
        interval = (f"{'(' if self.open_lo else '['}{_number(self.lo)}, "
                    f"{_number(self.hi)}{')' if self.open_hi else ']'}")
        return f"a number in {interval}" + (f" ({self.note})" if self.note else "")

    def check(self, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError("not a number")
        value = float(value)
        if math.isnan(value):
            raise ValueError("not a number")
        above = value > self.lo if self.open_lo else value >= self.lo
        below = value < self.hi if self.open_hi else value <= self.hi
        if not (above and below):
            raise ValueError("out of range")
        return value

    def parse(self, text: str) -> float:
        try:
            number = float(text)
        except ValueError:
            raise ValueError("not a number") from None
        return self.check(number)


class Flag(Rule):
    TRUE = ("1", "true", "yes", "on")
    FALSE = ("0", "false", "no", "off")

    def describe(self) -> str:
        return "true or false"

    def check(self, value: Any) -> bool:
        if isinstance(value, bool):
            return value
        raise ValueError("not true or false")

    def parse(self, text: str) -> bool:
        low = text.lower()
        if low in self.TRUE:
            return True
        if low in self.FALSE:
            return False
        raise ValueError("not true or false")


class Choice(Rule):
    def __init__(self, *values: Any):
        self.values = values

    def describe(self) -> str:
        return "one of " + ", ".join(map(str, self.values))

    def check(self, value: Any) -> Any:
        for choice in self.values:
            if type(value) is type(choice) and value == choice:
                return value
        close = close_names(value, self.values) if isinstance(value, str) else []
        raise ValueError(f"did you mean {', '.join(close)}?" if close else "not a choice")

    def parse(self, text: str) -> Any:
        for choice in self.values:
            if text == str(choice):
                return choice
        return self.check(text)


class Sizes(Rule):
    """Layer widths: a tuple of `min_len` to `max_len` integers in [lo, hi]; text "512,512" or "()"."""

    def __init__(self, lo: int, hi: int, min_len: int = 0, max_len: int = 16):
        self.item, self.min_len, self.max_len = Integer(lo, hi), min_len, max_len

    def describe(self) -> str:
        return (f"{self.min_len} to {self.max_len} comma-separated integers in "
                f"[{_number(self.item.lo)}, {_number(self.item.hi)}]")

    def check(self, value: Any) -> tuple:
        if not isinstance(value, (tuple, list)):
            raise ValueError("not a list of widths")
        if not self.min_len <= len(value) <= self.max_len:
            raise ValueError("wrong number of widths")
        return tuple(self.item.check(v) for v in value)

    def parse(self, text: str) -> tuple:
        inner = text.strip()
        if inner[:1] + inner[-1:] in ("()", "[]"):
            inner = inner[1:-1]
        items = [x.strip() for x in inner.split(",")] if inner.strip() else []
        if items and items[-1] == "":
            items.pop()  # "512," is one width, as Python writes a 1-tuple
        return self.check([self.item.parse(x) for x in items])


class Pattern(Rule):
    """A string that matches `regex` whole; `what` says in words what it may be."""

    def __init__(self, regex: str, what: str, max_len: int = 100):
        self.regex, self.what, self.max_len = re.compile(regex), what, max_len

    def describe(self) -> str:
        return self.what

    def check(self, value: Any) -> str:
        if not isinstance(value, str) or len(value) > self.max_len or not self.regex.fullmatch(value):
            raise ValueError("not a match")
        return value


def format_value(value: Any) -> str:
    """A value as a `name=value` override writes it: 512,512 for widths, true for a flag."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value)) if value else "()"
    return str(value)


# ---- Fields ------------------------------------------------------------------------------------------
def setting(default: Any, rule: Rule) -> Any:
    """A dataclass field with its default and the rule its values must follow (`rule_of`)."""
    return dataclasses.field(default=default, metadata={"rule": rule})


def rule_of(field: dataclasses.Field) -> Rule:
    rule = field.metadata.get("rule")
    if rule is None:  # a programming error: every field declares its rule (tests/test_validation.py)
        raise TypeError(f"field {field.name} declares no rule; give it setting(default, Rule(...))")
    return rule


def check_field(field: dataclasses.Field, value: Any, label: str | None = None) -> Any:
    """`value` normalised by the field's rule; ConfigError naming `label` (default: the field) if refused."""
    rule = rule_of(field)
    try:
        return rule.check(value)
    except ValueError as exc:
        raise rule.refusal(label or field.name, value, _reason(exc), field.default) from None


def parse_field(field: dataclasses.Field, text: str, label: str | None = None, default: Any = None) -> Any:
    """The value an override's text stands for under the field's rule; ConfigError if refused, quoting
    `default` (the value the override would replace, e.g. the preset's; else the field's default)."""
    rule = rule_of(field)
    try:
        return rule.parse(text)
    except ValueError as exc:
        raise rule.refusal(label or field.name, text, _reason(exc),
                           field.default if default is None else default) from None


def _reason(exc: ValueError) -> str | None:
    """The part of a rule's reason worth printing (a suggestion); the range says the rest."""
    text = str(exc)
    return text if text.startswith("did you mean") else None
