"""`python -m twm_fast.evaluate` refuses bad input with one line and exit 2, before playing an episode."""
import pytest
import torch

from twm_fast.checkpoint import FORMAT_VERSION
from twm_fast.evaluate import main


class Result:
    def __init__(self, returncode, stderr):
        self.returncode, self.stderr = returncode, stderr


@pytest.fixture
def evaluate(capsys):
    """main() in this process (the real command line's code; a subprocess would only add torch's import)."""
    def call(*args):
        code = main(list(args))
        return Result(code, capsys.readouterr().err)
    return call


@pytest.mark.parametrize("make, message", [
    (lambda p: None, "does not exist"),
    (lambda p: p.mkdir(), "a directory without checkpoints/"),
    (lambda p: p.write_bytes(b"\x80\x04 cut short"), "cannot read checkpoint"),
    (lambda p: torch.save({"format": FORMAT_VERSION, "config": {"game": "catch"}}, p), "does not hold a complete agent"),
    (lambda p: torch.save({"format": FORMAT_VERSION, "config": {"gaem": "catch"}, "num_actions": 3, "agent": {}}, p),
     "does not hold a complete agent"),
])
def test_bad_checkpoints(tmp_path, evaluate, make, message):
    make(tmp_path / "ckpt.pt")
    proc = evaluate(str(tmp_path / "ckpt.pt"))
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_unwritable_out_is_refused_first(tmp_path, evaluate):
    (tmp_path / "file").write_text("")
    # The checkpoint is missing too: the --out error comes first, before anything is loaded or played.
    proc = evaluate(str(tmp_path / "missing.pt"), "--out", str(tmp_path / "file" / "eval.json"))
    assert proc.returncode == 2 and "cannot write --out" in proc.stderr, proc.stderr
    proc = evaluate(str(tmp_path / "missing.pt"), "--out", str(tmp_path))
    assert proc.returncode == 2 and "is a directory" in proc.stderr
    assert not (tmp_path / "file" / "eval.json").exists()
