"""Many runs as one command on Ray: `python -m twm_fast.sweep --games atari26 --seeds 5 --out DIR`.

Each (game, seed) is a Ray task that runs `python -m twm_fast.train` in DIR/<game>/seed<k>/ (the
layout `twm_fast.train --out` writes, read by `python -m twm_fast.report DIR`). Without --address
Ray starts embedded on this machine; with one (auto, or ray://host:10001) the sweep joins a cluster,
whose machines must all see DIR (a shared filesystem).

A second call with the same arguments does only what is missing: a finished run (scores.json) is
skipped, an interrupted one continues from its last checkpoint (`twm_fast.train --resume`), and a
run that failed is started again from its checkpoint. A failed run is reported with the end of its
log (DIR/<game>/seed<k>.log) while the others go on. Ctrl-C or SIGTERM stops the sweep; each run
then saves a checkpoint, as `twm_fast.train` does on SIGTERM.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from twm_fast.checkpoint import has_checkpoint
from twm_fast.config import PRESETS, make_config
from twm_fast.envs import ATARI_100K_GAMES, canonical_game
from twm_fast.report import SWEEP_MANIFEST

LOG_TAIL_LINES = 15       # lines of a failed run's log shown in the summary
STATUS_EVERY_S = 30.0     # seconds between progress tables


@dataclass(frozen=True)
class RunSpec:
    game: str
    seed: int
    run_dir: str

    @property
    def name(self) -> str:
        return f"{self.game}/seed{self.seed}"

    @property
    def log(self) -> Path:
        return Path(self.run_dir).with_suffix(".log")


def run_state(run_dir: Path) -> str:
    """'done' (scores.json), 'resumable' (a checkpoint), 'stale' (files, no checkpoint) or 'new'."""
    if (run_dir / "scores.json").is_file():
        return "done"
    if has_checkpoint(run_dir):
        return "resumable"
    if run_dir.exists() and any(run_dir.iterdir()):
        return "stale"
    return "new"


# Put in front of each train command: on Linux the run then gets SIGTERM (and so checkpoints) if its
# Ray worker dies, and becomes the train command (exec), so no process sits between the two.
# (subprocess's preexec_fn would do this in the forked child, which is unsafe in Ray's threaded workers.)
_LAUNCHER = """import ctypes, os, signal, sys
try:
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
except (OSError, AttributeError):
    pass
os.execv(sys.argv[1], sys.argv[1:])"""


def train_command(spec: RunSpec, preset: str, overrides: list[str]) -> list[str]:
    """The `twm_fast.train` command that continues or starts this run."""
    run_dir = Path(spec.run_dir)
    state = run_state(run_dir)
    base = [sys.executable, "-m", "twm_fast.train", "--no-progress"]
    if state == "resumable":
        return base + ["--resume", str(run_dir)]
    if state == "stale":
        # Killed before its first checkpoint: nothing to resume. Keep its files beside it, start anew.
        run_dir.rename(run_dir.with_name(f"{run_dir.name}.incomplete-{time.strftime('%Y%m%d-%H%M%S')}"))
    return base + ["--game", spec.game, "--seed", str(spec.seed), "--preset", preset, "--out", str(run_dir),
                   *overrides]


def run_training(spec: RunSpec, preset: str, overrides: list[str]) -> dict:
    """One run, to completion or failure, as a subprocess (the body of the Ray task)."""
    command = train_command(spec, preset, overrides)
    spec.log.parent.mkdir(parents=True, exist_ok=True)
    with open(spec.log, "a") as log:
        log.write(f"\n$ {' '.join(command)}\n")
        log.flush()
        proc = subprocess.Popen([sys.executable, "-c", _LAUNCHER, *command], stdout=log, stderr=subprocess.STDOUT)
        try:
            # Polled, not proc.wait(): ray.cancel raises KeyboardInterrupt only between Python
            # bytecodes, which a blocking wait never reaches.
            while proc.poll() is None:
                time.sleep(0.5)
        except KeyboardInterrupt:   # ray.cancel: the run saves a checkpoint (train's SIGTERM) and stops
            proc.terminate()
            proc.wait()
            raise
        code = proc.returncode
    status = "done" if code == 0 and run_state(Path(spec.run_dir)) == "done" else "failed"
    return {"name": spec.name, "status": status, "returncode": code,
            "log_tail": "" if status == "done" else tail(spec.log, LOG_TAIL_LINES)}


def tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _last_records(path: Path, size: int = 8192) -> list[dict]:
    """The JSON records in the last `size` bytes of a .jsonl file (the first may be cut: skipped)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - size))
            text = f.read().decode(errors="replace")
    except OSError:
        return []
    records = []
    for line in text.splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return [r for r in records if isinstance(r, dict)]


def progress_line(spec: RunSpec, env_steps_total: int, first_seen: dict[str, tuple[float, int]]) -> str:
    """One run: phase, env steps, latest evaluation, and an ETA from the rate of env steps since this
    sweep first saw the run's main loop (first_seen: run name -> (time, env steps), updated here)."""
    run_dir = Path(spec.run_dir)
    records = _last_records(run_dir / "metrics.jsonl")
    # Prefill writes no phase records, only episode returns.
    phase = next((r["phase"] for r in reversed(records) if "phase" in r), "prefill" if records else "starting")
    steps = max((r.get("env_steps", 0) for r in records), default=0)
    evals = _last_records(run_dir / "eval.jsonl")
    latest = f"eval {evals[-1]['mean']:.2f}" if evals and "mean" in evals[-1] else "eval -"
    eta = "ETA -"
    if phase == "main":
        now = time.time()
        since, steps_then = first_seen.setdefault(spec.name, (now, steps))
        if steps > steps_then:
            eta = f"ETA {_duration((env_steps_total - steps) * (now - since) / (steps - steps_then))}"
    return f"  {spec.name:<24} {phase:<14} env steps {steps:>7,}/{env_steps_total:,}  {latest:<12} {eta}"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def parse_games(text: str) -> list[str]:
    """'atari26' or a comma-separated list of games (any spelling canonical_game takes)."""
    if text.lower() == "atari26":
        return list(ATARI_100K_GAMES)
    games = [canonical_game(name) for name in text.split(",") if name.strip()]
    if not games:
        raise ValueError("--games is empty; give atari26 or names such as Pong,Breakout")
    return list(dict.fromkeys(games))


def parse_seeds(text: str) -> list[int]:
    """'5' -> seeds 0..4; '0,3,7' -> those seeds."""
    try:
        if "," in text:
            seeds = [int(s) for s in text.split(",") if s.strip()]
        else:
            seeds = list(range(int(text)))
    except ValueError:
        raise ValueError(f"--seeds {text!r}: give a count (5) or a list (0,3,7)") from None
    if not seeds or min(seeds) < 0:
        raise ValueError(f"--seeds {text!r}: give a positive count or non-negative seeds")
    return seeds


def check_manifest(out: Path, manifest: dict) -> None:
    """Refuse to mix sweeps: a second call must ask for the same preset and overrides."""
    path = out / SWEEP_MANIFEST
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        raise ValueError(f"{path} is damaged; remove it (the runs stay) or choose another --out") from None
    for key in ("preset", "overrides"):
        if old.get(key) != manifest[key]:
            raise ValueError(f"{out} holds a sweep with {key} {old.get(key)!r}, not {manifest[key]!r}; "
                             "use the same settings to continue it, or choose another --out")
    manifest["games"] = list(dict.fromkeys(old.get("games", []) + manifest["games"]))
    manifest["seeds"] = sorted(set(old.get("seeds", [])) | set(manifest["seeds"]))


def start_ray(args) -> None:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
    except ImportError:
        raise ImportError('the sweep runs on Ray: pip install "twm-fast[sweep]"') from None
    options = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if args.address:
        ray.init(address=args.address, **options)
    else:
        resources = {"num_cpus": args.cpus or os.cpu_count()}
        if args.gpus is not None:
            resources["num_gpus"] = args.gpus
        if args.object_store_mb:
            resources["object_store_memory"] = args.object_store_mb * 2 ** 20
        ray.init(**resources, **options)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m twm_fast.sweep", description=__doc__.split("\n\n")[0],
                                epilog="Overrides name=value apply to every run (see python -m twm_fast.train).")
    p.add_argument("--games", required=True, help="atari26, or games such as Pong,Breakout,catch")
    p.add_argument("--seeds", default="5", help="a count (5: seeds 0-4) or a list (0,3,7)")
    p.add_argument("--preset", default="paper", help=f"one of {', '.join(PRESETS)} (default paper)")
    p.add_argument("--out", default="sweeps/sweep", help="sweep directory (runs in OUT/<game>/seed<k>/)")
    p.add_argument("--address", default=None, help="join a Ray cluster: auto, or ray://host:10001")
    p.add_argument("--gpus-per-run", type=float, default=None,
                   help="GPUs per run; fractions share a card (default: 1 where Ray sees GPUs, else 0)")
    p.add_argument("--cpus-per-run", type=float, default=1.0, help="CPUs Ray reserves per run (default 1)")
    p.add_argument("--cpus", type=int, default=None, help="embedded Ray: CPUs it may use (default all)")
    p.add_argument("--gpus", type=int, default=None, help="embedded Ray: GPUs it may use (default all)")
    p.add_argument("--object-store-mb", type=int, default=None, help="embedded Ray: object store size")
    p.add_argument("--status-every", type=float, default=STATUS_EVERY_S, help="seconds between progress lines")
    p.add_argument("overrides", nargs="*", metavar="name=value")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _main(args)
    except (ValueError, ImportError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _main(args) -> int:
    games, seeds = parse_games(args.games), parse_seeds(args.seeds)
    if {o.split("=", 1)[0].strip() for o in args.overrides} & {"game", "seed"}:
        raise ValueError("game and seed come from --games and --seeds, not from overrides")
    config = make_config(args.preset, args.overrides)   # validates preset and overrides before Ray starts
    out = Path(args.out)
    manifest = {"games": games, "seeds": seeds, "preset": args.preset, "overrides": list(args.overrides)}
    check_manifest(out, manifest)
    out.mkdir(parents=True, exist_ok=True)
    (out / SWEEP_MANIFEST).write_text(json.dumps(manifest, indent=2))

    specs = [RunSpec(g, s, str((out / g / f"seed{s}").resolve())) for g in games for s in seeds]
    skipped = [spec for spec in specs if run_state(Path(spec.run_dir)) == "done"]
    todo = [spec for spec in specs if spec not in skipped]
    print(f"sweep {out}: {len(specs)} runs ({len(games)} games x {len(seeds)} seeds), {len(skipped)} finished "
          f"(skipped), {len(todo)} to run", file=sys.stderr)
    results: list[dict] = []
    if todo:
        results = _run_on_ray(args, todo, config.env_steps)
    count = {status: [r for r in results if r["status"] == status] for status in ("done", "failed", "stopped")}
    for r in count["failed"]:
        print(f"\nFAILED {r['name']} (exit {r['returncode']}); end of its log:\n{r['log_tail']}", file=sys.stderr)
    again = count["failed"] or count["stopped"]
    print(f"\nsummary: {len(count['done'])} done, {len(count['failed'])} failed, {len(count['stopped'])} stopped, "
          f"{len(skipped)} skipped"
          + ("; the same command continues the failed and stopped runs from their checkpoints" if again else "")
          + f"\nreport: python -m twm_fast.report {out} --out {out / 'report'}", file=sys.stderr)
    return 1 if count["failed"] else (130 if count["stopped"] else 0)


def _run_on_ray(args, todo: list[RunSpec], env_steps: int) -> list[dict]:
    start_ray(args)
    import ray

    gpus = args.gpus_per_run
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    task = ray.remote(run_training).options(num_cpus=args.cpus_per_run, num_gpus=gpus, max_retries=0)
    started = time.time()
    pending = {task.remote(spec, args.preset, list(args.overrides)): spec for spec in todo}
    results: list[dict] = []
    stop = {"now": False}

    def request_stop(signum, frame):
        stop["now"] = True

    old_handlers = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    last_status = 0.0
    first_seen: dict[str, tuple[float, int]] = {}
    try:
        while pending and not stop["now"]:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            for ref in ready:
                spec = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayError as exc:  # a worker that died or could not start: go on
                    result = {"name": spec.name, "status": "failed", "returncode": None,
                              "log_tail": f"{type(exc).__name__}: {exc}"}
                results.append(result)
                print(f"{result['status']}: {result['name']} ({len(results)}/{len(todo)})", file=sys.stderr)
            if time.time() - last_status >= args.status_every and pending:
                last_status = time.time()
                print(f"[{_duration(time.time() - started)}] {len(pending)} running or queued:", file=sys.stderr)
                for spec in pending.values():
                    print(progress_line(spec, env_steps, first_seen), file=sys.stderr)
        if stop["now"]:
            print("\nstopping: every run saves a checkpoint; the same command continues the sweep",
                  file=sys.stderr)
            for ref in pending:
                ray.cancel(ref)          # a KeyboardInterrupt in the task: its run checkpoints
            ray.wait(list(pending), num_returns=len(pending), timeout=120)
            results += [{"name": spec.name, "status": "stopped", "returncode": None, "log_tail": tail(spec.log, 3)}
                        for spec in pending.values()]
    finally:
        for s, handler in old_handlers.items():
            signal.signal(s, handler)
        ray.shutdown()
    return results


if __name__ == "__main__":
    sys.exit(main())
