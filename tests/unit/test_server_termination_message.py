"""modelserver's exit reasons reach the pod's status: `stop()` writes the kubelet's
termination-message file when it exists, and never creates one on a host."""

from __future__ import annotations

from pathlib import Path

import pytest
from modelserver import cli

pytestmark = pytest.mark.unit


def test_stop_writes_the_termination_message(tmp_path: Path, monkeypatch, capsys) -> None:
    log = tmp_path / "termination-log"
    log.write_text("")
    monkeypatch.setattr(cli, "TERMINATION_LOG", str(log))
    assert cli.stop(1, "modelserver: cannot serve: checksum mismatch for model.gguf") == 1
    assert log.read_text() == "modelserver: cannot serve: checksum mismatch for model.gguf"
    assert "checksum mismatch" in capsys.readouterr().err


def test_stop_creates_no_file_outside_a_container(tmp_path: Path, monkeypatch) -> None:
    log = tmp_path / "termination-log"
    monkeypatch.setattr(cli, "TERMINATION_LOG", str(log))
    assert cli.stop(2, "modelserver: bad flag") == 2
    assert not log.exists()


def test_a_config_error_becomes_the_termination_message(tmp_path: Path, monkeypatch) -> None:
    log = tmp_path / "termination-log"
    log.write_text("")
    monkeypatch.setattr(cli, "TERMINATION_LOG", str(log))
    assert cli.main(["serve", "--model", "/nowhere", "--no-tls"]) == 2
    assert "--api-keys-file" in log.read_text()
