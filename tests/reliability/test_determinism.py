"""Same seed and config, same run: metrics byte for byte (timing aside), same weights."""

from __future__ import annotations

from tests.conftest import run_train
from tests.reliability.conftest import REFERENCE, checkpoint_dir, comparable_metrics


def test_same_seed_and_config_give_identical_metrics_and_weights(
    tmp_path, corpus_dir, reference_run
):
    run = tmp_path / "run"
    run_train(run, corpus_dir, *REFERENCE)
    assert comparable_metrics(run) == comparable_metrics(reference_run)
    assert (run / "run.json").read_bytes() == (reference_run / "run.json").read_bytes()
    final = "model.safetensors"
    assert (checkpoint_dir(run, 12) / final).read_bytes() == (
        checkpoint_dir(reference_run, 12) / final
    ).read_bytes()
