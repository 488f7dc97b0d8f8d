"""metrics.jsonl under I/O failure: one MetricsWriteError line naming the file and the fix, and no
torn line ever kept (cut back at once after a failed write, dropped on resume, gone on a fresh
start). In-process, no training."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from training.metrics import MetricsLogger, MetricsWriteError

TORN = '{"event": "train", "step": 3, "train/lo'  # what a kill mid-write leaves


def lines(run_dir: Path) -> list[str]:
    return (run_dir / "metrics.jsonl").read_text().split("\n")


def write_steps(run_dir: Path, steps: range, torn: bool) -> None:
    text = "".join(json.dumps({"event": "train", "step": s}) + "\n" for s in steps)
    (run_dir / "metrics.jsonl").write_text(text + (TORN if torn else ""))


class FullDisk:
    """A file object whose writes stop part-way, as on a disk that fills mid-line."""

    def __init__(self, inner, room: int) -> None:
        self.inner, self.room = inner, room

    def write(self, data) -> int:
        if self.room <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written = self.inner.write(bytes(data)[: self.room])
        self.room -= written
        return written

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_resume_drops_a_torn_last_line(tmp_path):
    write_steps(tmp_path, range(1, 3), torn=True)
    logger = MetricsLogger(tmp_path, enabled=True, resume_step=2)
    logger.log("train", 3, {"train/loss": 1.0})
    logger.close()
    records = [json.loads(line) for line in lines(tmp_path) if line]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert lines(tmp_path)[-1] == ""  # every line whole, the last one too


def test_resume_drops_a_torn_line_that_later_writes_followed(tmp_path):
    text = json.dumps({"event": "train", "step": 1}) + "\n" + TORN + "\n" + "[3]\n" + '"x"\n'
    (tmp_path / "metrics.jsonl").write_text(text)
    MetricsLogger(tmp_path, enabled=True, resume_step=5).close()
    assert lines(tmp_path) == [json.dumps({"event": "train", "step": 1}), ""]


def test_fresh_start_keeps_nothing_of_an_earlier_file(tmp_path):
    write_steps(tmp_path, range(1, 3), torn=True)
    logger = MetricsLogger(tmp_path, enabled=True)
    logger.log("train", 1, {"train/loss": 1.0})
    logger.close()
    assert [json.loads(line)["step"] for line in lines(tmp_path) if line] == [1]


def test_disk_full_mid_line_is_one_error_and_leaves_no_torn_line(tmp_path):
    logger = MetricsLogger(tmp_path, enabled=True)
    logger.log("train", 1, {"train/loss": 1.0})
    logger._file = FullDisk(logger._file, room=10)
    with pytest.raises(MetricsWriteError) as raised:
        logger.log("train", 2, {"train/loss": 0.5})
    message = str(raised.value)
    assert "\n" not in message
    assert f"could not write {tmp_path / 'metrics.jsonl'} (No space left on device)" in message
    assert "free disk space" in message and "resume" in message
    assert lines(tmp_path) == [json.dumps({"event": "train", "step": 1, "train/loss": 1.0}), ""]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_run_dir_is_one_error_naming_the_file(tmp_path):
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(MetricsWriteError, match="Permission denied") as raised:
            MetricsLogger(tmp_path, enabled=True)
    finally:
        tmp_path.chmod(0o755)
    assert str(tmp_path / "metrics.jsonl") in str(raised.value)


def test_a_run_dir_that_is_a_file_is_one_error(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.write_text("not a directory")
    with pytest.raises(MetricsWriteError, match="Not a directory"):
        MetricsLogger(run_dir, enabled=True)


def test_resume_rewrite_failure_is_one_error_and_keeps_the_file(tmp_path, monkeypatch):
    write_steps(tmp_path, range(1, 4), torn=False)
    before = (tmp_path / "metrics.jsonl").read_text()

    def full_disk(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_text", full_disk)
    with pytest.raises(MetricsWriteError, match="No space left on device"):
        MetricsLogger(tmp_path, enabled=True, resume_step=2)
    monkeypatch.undo()
    assert (tmp_path / "metrics.jsonl").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]
