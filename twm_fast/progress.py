"""One progress display for a whole training run (SPEC 7's phases, in order).

It shows the phase (k of n) and its progress, the run's ETA, the current rate (the main loop's
training steps/s), the latest evaluation with its env step and the next one's, the latest
training episode's return and the named losses. On a terminal it is a live block of up to three
lines, redrawn twice a second, that fits the terminal's width (80 columns and up); elsewhere (a
batch log, `--no-progress`) it prints a heartbeat line with the same fields every `heartbeat_s`
seconds. Events (a phase done, an evaluation, a message) go above the live block as permanent
lines, so neither a log nor the terminal's scrollback loses them.

The run's ETA adds up the phases still to run. The current phase runs at its measured rate over
the last few minutes of wall time (evaluations and checkpoints included, so they do not make the
ETA swing); a phase not yet started takes the cost model's estimate (`twm_fast.estimate`), scaled
by how far the measured phases were from their estimates.

The training loop only sets counters (`advance`, `update`); a daemon thread draws the display, so
the loop pays no formatting and the display stays alive through long evaluations.
"""
from __future__ import annotations

import collections
import math
import shutil
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

# The measured rate of a phase covers this much wall time (ten minutes), so that evaluations and
# checkpoints (pauses of seconds to a minute) move the ETA by a few percent, not a factor of five.
RATE_WINDOW_S = 600.0
# A phase's own rate replaces the cost model's estimate after this long.
MIN_MEASURED_S = 5.0
# The live display is redrawn this often; heartbeat lines come every `heartbeat_s`.
REDRAW_S = 0.5
# Named losses, in the order they are dropped last (metrics key, name shown).
LOSS_NAMES = (("obs/loss", "obs model"), ("dyn/loss", "dynamics"), ("ac/critic_loss", "critic"),
              ("ac/actor_loss", "actor"))
# The dynamics loss's terms, shown where the terminal is wide enough (SPEC 3: z CE + 10 r + 50 g).
DYNAMICS_TERMS = (("dyn/z_ce", "z"), ("dyn/reward_nll", "reward"), ("dyn/discount_nll", "discount"))


@dataclass
class Phase:
    """One phase of the run as the display counts it."""

    name: str           # the trainer's phase key
    title: str          # what the display calls it
    total: int          # units in the phase
    unit: str           # "env steps", "updates", "episodes"
    estimate_s: float   # the cost model's seconds per unit (0: none yet)
    first: int = 0      # the count the phase starts from (the main loop counts env steps from the prefill's end)
    done: int = 0
    started: float | None = None   # clock time when this session started it
    start_done: int = 0            # units already done when it started (a resumed run)
    elapsed: float | None = None   # seconds this session spent in it, once finished


def format_duration(seconds: float | None) -> str:
    """45s, 3m20s, 2h05m, 3d04h: two units at most, as a glance needs."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def format_number(x: float) -> str:
    """Three significant digits without exponent noise: 1.51e4, 25.7, -0.0312."""
    if not math.isfinite(x):
        return str(x)
    text = f"{x:.3g}"
    if "e" in text:
        mantissa, exponent = text.split("e")
        text = f"{mantissa}e{int(exponent)}"
    return text


class RunEta:
    """The run's remaining time from measured phase rates and the cost model's estimates."""

    def __init__(self, phases: list[Phase], window_s: float = RATE_WINDOW_S):
        self.phases = phases
        self.window_s = window_s
        self.current: Phase | None = None
        self._samples: collections.deque[tuple[float, int, int]] = collections.deque()  # (time, done, train steps)

    def start(self, phase: Phase, now: float) -> None:
        self.current = phase
        phase.started, phase.start_done = now, phase.done
        self._samples.clear()

    def finish(self, now: float) -> None:
        phase = self.current
        if phase is not None and phase.started is not None:
            phase.elapsed = now - phase.started
        self.current = None
        self._samples.clear()

    def sample(self, now: float, train_steps: int = 0) -> None:
        """Record the current phase's progress (about once a second) and forget what left the window."""
        if self.current is None:
            return
        self._samples.append((now, self.current.done, train_steps))
        # Keep one sample at or before the window's start, so the window spans all of window_s.
        while len(self._samples) > 2 and self._samples[1][0] <= now - self.window_s:
            self._samples.popleft()

    def rates(self, now: float, train_steps: int = 0) -> tuple[float | None, float | None]:
        """(units/s, training steps/s) of the current phase over the window, or None while too short."""
        if self.current is None or not self._samples:
            return None, None
        t0, done0, steps0 = self._samples[0]
        if now - t0 < MIN_MEASURED_S:
            return None, None
        span = now - t0
        return (self.current.done - done0) / span, (train_steps - steps0) / span

    def _scale(self, now: float) -> float:
        """Measured time / estimated time over what ran in this session: corrects the estimates of
        the phases still to come for this machine and its load."""
        measured = estimated = 0.0
        for phase in self.phases:
            if phase.started is None or phase.estimate_s <= 0:
                continue
            spent = phase.elapsed if phase.elapsed is not None else now - phase.started
            if phase.elapsed is None and spent < MIN_MEASURED_S:
                continue
            measured += spent
            estimated += (phase.done - phase.start_done) * phase.estimate_s
        return measured / estimated if measured > 0 and estimated > 0 else 1.0

    def remaining(self, now: float) -> float | None:
        """Seconds until the run ends, or None when nothing can be said yet."""
        scale = self._scale(now)
        total = 0.0
        known = False
        for phase in self.phases:
            left = phase.total - phase.done
            if left <= 0 or phase.elapsed is not None:
                continue
            if phase is self.current and phase.started is not None:
                rate, _ = self.rates(now)
                done, spent = phase.done - phase.start_done, now - phase.started
                if rate:
                    total += left / rate
                elif done > 0:  # too early for the window: the rate since the phase began
                    total += left * spent / done
                elif phase.estimate_s > 0:  # no progress to go by (an evaluation): the estimate, less the time spent
                    total += max(left * phase.estimate_s * scale - spent, 0.0)
                else:
                    continue
                known = True
                continue
            if phase.estimate_s > 0:
                total += left * phase.estimate_s * scale
                known = True
        return total if known else None


@dataclass
class RunState:
    """What the trainer reports; the display reads it."""

    train_steps: int = 0
    train_steps_total: int = 0
    eval_mean: float | None = None
    eval_env_step: int | None = None
    next_eval: int | None = None        # env step of the next evaluation; None: the final one
    episode_return: float | None = None
    status: str | None = None           # e.g. "evaluating 10 episodes": shown instead of the rate
    status_since: float = 0.0
    losses: dict[str, float] = field(default_factory=dict)


class RunProgress:
    """The display. `live=True` draws on a terminal; else heartbeat lines (see the module doc)."""

    def __init__(self, phases: list[Phase], *, live: bool, heartbeat_s: float = 60.0, stream: TextIO | None = None,
                 columns: int | None = None, clock: Callable[[], float] = time.monotonic,
                 losses: Callable[[], dict[str, float]] | None = None, thread: bool = True):
        self.phases = phases
        self.live = live
        self.heartbeat_s = heartbeat_s
        self.stream = stream if stream is not None else sys.stderr
        self._columns = columns
        self.clock = clock
        self.state = RunState()
        self.eta = RunEta(phases)
        self._pull_losses = losses
        self._losses_pulled = -math.inf
        self._started = clock()
        self._last_heartbeat = self._started
        self._last_sample = -math.inf
        self._drawn = 0                 # lines of the live block on the screen
        self._lock = threading.Lock()
        self._closed = False
        self._stop = threading.Event()
        self._thread = None
        if thread:
            self._thread = threading.Thread(target=self._run_ticker, name="twm-progress", daemon=True)
            self._thread.start()

    # ---- What the trainer calls -------------------------------------------------------------
    def phase(self, name: str) -> Phase:
        return next(p for p in self.phases if p.name == name)

    def start_phase(self, name: str, done: int = 0) -> None:
        """Start phase `name` at `done` units (a resumed run: where it stopped; the phases before it
        count as complete)."""
        with self._lock:
            phase = self.phase(name)
            for earlier in self.phases[:self.phases.index(phase)]:
                earlier.done = max(earlier.done, earlier.total)
            phase.done = done
            self.eta.start(phase, self.clock())
            self.eta.sample(self.clock(), self.state.train_steps)
            if not self.live:
                self._write_lines([self.heartbeat_line()])
                self._last_heartbeat = self.clock()

    def advance(self, n: int = 1) -> None:
        """n more units of the current phase (the hot path: a counter, and the losses once a second)."""
        phase = self.eta.current
        if phase is not None:
            phase.done += n
        if self._pull_losses is not None:
            now = self.clock()
            if now - self._losses_pulled >= 1.0:
                self._losses_pulled = now
                self.state.losses = self._pull_losses()

    def update(self, **fields) -> None:
        """Set fields of RunState (train_steps, eval_mean, episode_return, status, ...)."""
        if "status" in fields:
            self.state.status_since = self.clock()
        for key, value in fields.items():
            setattr(self.state, key, value)

    def finish_phase(self, summary: str | None = None) -> None:
        """End the current phase with a permanent line saying what it did."""
        with self._lock:
            phase = self.eta.current
            now = self.clock()
            self.eta.finish(now)
            if phase is None:
                return
            if self._pull_losses is not None:
                self.state.losses = self._pull_losses()
            units = phase.done - phase.start_done
            spent = phase.elapsed or 0.0
            rate = f", {format_number(units / spent)} {phase.unit}/s" if spent > 0 and units > 0 else ""
            line = (f"{self._phase_label(phase)} done: {units:,} {phase.unit} in {format_duration(spent)}{rate}"
                    + (f"; {summary}" if summary else ""))
            self._write_lines([line])

    def message(self, text: str) -> None:
        """A permanent line (an evaluation's result, a warning) above the live block."""
        with self._lock:
            self._write_lines([text])

    def close(self) -> None:
        """Stop the display; the last state stays on the screen and later output starts on a new line."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self.live and self._drawn:
                self._draw(self.lines(self.columns()))
                self.stream.write("\n")
                self._drawn = 0
            self.stream.flush()

    # ---- Drawing --------------------------------------------------------------------------------
    def columns(self) -> int:
        return self._columns or shutil.get_terminal_size((80, 24)).columns

    def tick(self) -> None:
        """Sample the rates, then redraw (live) or print a heartbeat line when one is due."""
        with self._lock:
            if self._closed:
                return
            now = self.clock()
            if now - self._last_sample >= 1.0:
                self._last_sample = now
                self.eta.sample(now, self.state.train_steps)
            if self.live:
                self._draw(self.lines(self.columns()))
            elif now - self._last_heartbeat >= self.heartbeat_s:
                self._last_heartbeat = now
                self._write_lines([self.heartbeat_line()])

    def _run_ticker(self) -> None:
        while not self._stop.wait(REDRAW_S if self.live else min(REDRAW_S * 2, self.heartbeat_s)):
            try:
                self.tick()
            except Exception as error:  # noqa: BLE001  (a display bug must never stop training)
                self._stop.set()
                print(f"progress display stopped: {error!r}", file=sys.stderr)

    def _draw(self, lines: list[str]) -> None:
        """Replace the live block with `lines` in one write (cursor ends after the last line)."""
        up = "\r" + (f"\x1b[{self._drawn - 1}A" if self._drawn > 1 else "") if self._drawn else ""
        self.stream.write(up + "\x1b[J" + "\n".join(lines))
        self.stream.flush()
        self._drawn = len(lines)

    def _write_lines(self, lines: list[str]) -> None:
        """Permanent lines: above the live block on a terminal, else plain lines."""
        if self.live and not self._closed:
            up = "\r" + (f"\x1b[{self._drawn - 1}A" if self._drawn > 1 else "") if self._drawn else ""
            self.stream.write(up + "\x1b[J" + "".join(line + "\n" for line in lines))
            self._drawn = 0
            self._draw(self.lines(self.columns()))
        else:
            self.stream.write("".join(line + "\n" for line in lines))
            self.stream.flush()

    # ---- Content ------------------------------------------------------------------------------
    def _phase_label(self, phase: Phase) -> str:
        return f"[{self.phases.index(phase) + 1}/{len(self.phases)}] {phase.title}"

    def _fields(self, now: float) -> dict[str, str]:
        """Every field as text; lines() and heartbeat_line() lay them out."""
        s = self.state
        phase = self.eta.current
        fields = {}
        if phase is not None:
            fields["phase"] = self._phase_label(phase)
            fields["count"] = f"{phase.done:,}/{phase.total:,} {phase.unit}"
            fields["percent"] = f"{100 * _fraction(phase):.0f}%"
        else:
            fields["phase"] = "[-] between phases"
        fields["eta"] = f"run ETA {format_duration(self.eta.remaining(now))}"
        unit_rate, step_rate = self.eta.rates(now, s.train_steps)
        if s.status:
            fields["rate"] = f"{s.status} {format_duration(now - s.status_since)}"
        elif phase is not None and phase.name == "main":
            rate = "…" if step_rate is None else f"{step_rate:.3g}"
            fields["rate"] = f"{rate} train steps/s ({s.train_steps:,}/{s.train_steps_total:,})"
        elif phase is not None:
            fields["rate"] = f"{'…' if unit_rate is None else format_number(unit_rate)} {phase.unit}/s"
        nxt = "final" if s.next_eval is None else f"{s.next_eval:,}"
        if s.eval_mean is None:
            fields["eval"] = "first eval after pretraining"
        else:
            fields["eval"] = f"eval {s.eval_mean:.2f} at {s.eval_env_step:,}, next {nxt}"
        if s.episode_return is not None:
            fields["return"] = f"episode return {format_number(s.episode_return)}"
        return fields

    def _losses(self, detailed: bool) -> list[str]:
        items = []
        for key, name in LOSS_NAMES:
            if key in self.state.losses:
                text = f"{name} {format_number(self.state.losses[key])}"
                if detailed and key == "dyn/loss":
                    terms = [f"{n} {format_number(self.state.losses[k])}" for k, n in DYNAMICS_TERMS
                             if k in self.state.losses]
                    text += f" ({', '.join(terms)})" if terms else ""
                items.append(text)
        return items

    def lines(self, columns: int) -> list[str]:
        """The live block for a terminal `columns` wide: every line at most columns - 1 characters
        (a full line would wrap on some terminals)."""
        width = max(columns - 1, 20)
        f = self._fields(self.clock())
        head = f"{f['phase']}  {f.get('count', '')}"
        tail = f" {f.get('percent', '')}  {f['eta']}" if "percent" in f else f"  {f['eta']}"
        bar_width = min(width - len(head) - len(tail) - 3, 40)
        phase = self.eta.current
        if bar_width >= 8 and phase is not None:
            filled = round(bar_width * _fraction(phase))
            head += " ▕" + "█" * filled + "░" * (bar_width - filled) + "▏"
        lines = [_fit(head + tail, width)]
        second = [f[k] for k in ("rate", "return", "eval") if k in f]
        if len("  " + " · ".join(second)) <= width:
            lines.append("  " + " · ".join(second))
        else:  # the evaluation gets a line of its own
            lines += [_fit("  " + _join_fitting(second[:-1], width - 2), width), _fit("  " + second[-1], width)]
        for detailed in (True, False):
            losses = self._losses(detailed)
            text = "  losses: " + ", ".join(losses)
            if losses and (len(text) <= width or not detailed):
                lines.append(_fit("  losses: " + _join_fitting(losses, width - 10, ", "), width))
                break
        return lines

    def heartbeat_line(self) -> str:
        """One log line with every field."""
        now = self.clock()
        f = self._fields(now)
        parts = [" ".join(x for x in (f["phase"], f.get("count", ""), f"({f['percent']})" if "percent" in f else "")
                          if x)]
        parts += [f[k] for k in ("eta", "rate", "return", "eval") if k in f]
        losses = self._losses(detailed=True)
        if losses:
            parts.append("losses: " + ", ".join(losses))
        stamp = time.strftime("%H:%M:%S")
        return f"{stamp} +{format_duration(now - self._started)} " + " | ".join(parts)


def _fraction(phase: Phase) -> float:
    return min(max((phase.done - phase.first) / max(phase.total - phase.first, 1), 0.0), 1.0)


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def _join_fitting(items: list[str], width: int, sep: str = " · ") -> str:
    """Join items, dropping the last ones that do not fit."""
    out = ""
    for item in items:
        candidate = item if not out else out + sep + item
        if len(candidate) > width and out:
            break
        out = candidate
    return out
