"""Tests of the ``pyirg`` console command (pyirg.cli)."""

from __future__ import annotations

import types

from pyirg import cli


def test_ctrl_c_is_one_line_with_status_130(monkeypatch, capsys) -> None:
    def interrupted(argv: list[str]) -> int:
        raise KeyboardInterrupt

    fake = types.SimpleNamespace(main=interrupted)
    monkeypatch.setattr(cli.importlib, "import_module", lambda name: fake)
    monkeypatch.delenv("PYIRG_DEBUG", raising=False)
    assert cli.main(["main", "--quick"]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and len(err.strip().splitlines()) == 1


def test_a_stopped_training_names_its_signal_and_snapshot(monkeypatch, capsys, tmp_path) -> None:
    """SIGTERM during a command's training (pyirg refilled, main, ...): status 128 + 15 and
    the iteration and snapshot it stopped at, as pyirg train says it."""
    import signal

    from pyirg.train import TrainingInterrupted, TrainResult

    state = tmp_path / "net_iter_12.solverstate"
    result = TrainResult(
        out_dir=tmp_path, weights=tmp_path / "net_iter_12.caffemodel", solverstate=state,
        iterations=12, metrics={}, interrupted=True,
    )  # fmt: skip

    def stopped(argv: list[str]) -> int:
        raise TrainingInterrupted(result, signal.SIGTERM)

    monkeypatch.setattr(
        cli.importlib, "import_module", lambda name: types.SimpleNamespace(main=stopped)
    )
    monkeypatch.delenv("PYIRG_DEBUG", raising=False)
    assert cli.main(["refilled"]) == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    assert f"stopped by SIGTERM at iteration 12 (saved {state})" in err
    assert len(err.strip().splitlines()) == 1
