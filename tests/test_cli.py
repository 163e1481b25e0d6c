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
