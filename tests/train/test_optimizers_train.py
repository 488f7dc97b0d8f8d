"""Every optim= choice through train.py: it learns, refreshes its Hessian and resumes exactly."""

from __future__ import annotations

import json

import pytest
import torch

from model.gpt import GPT, GPTConfig
from optim.hessian import GaussNewtonBartlett, Hutchinson
from optim.registry import OPTIMIZERS
from tests.conftest import read_metrics, run_train

# Peak lrs that make the tiny TINY_RUN model learn in 30 steps (not tuned beyond that).
LEARNING_RATES = {"adamw": 3e-3, "lion": 3e-3, "sophia": 3e-3, "sophiah": 3e-3, "adahessian": 0.15,
                  "muon": 3e-3}  # fmt: skip
SECOND_ORDER = ("sophia", "sophiah", "adahessian")
HESS_INTERVAL = 2


def losses(run_dir) -> dict[int, float]:
    return {r["step"]: r["train/loss"] for r in read_metrics(run_dir)}


def test_every_optim_choice_has_a_learning_rate_here():
    assert set(LEARNING_RATES) == set(OPTIMIZERS)


@pytest.mark.parametrize("optim", list(LEARNING_RATES))
def test_loss_falls(tmp_path, corpus_dir, optim):
    """It learns; a second-order rule refreshes once every k steps (Sophia-G after steps k-1,
    2k-1, ..., Sophia-H on the training batch of steps k, 2k, ..., AdaHessian on that of steps
    0, k, ...), each refresh's FLOPs and time counted."""
    extra = [f"optim.hess_interval={HESS_INTERVAL}"] if optim in SECOND_ORDER else []
    run_train(tmp_path / "run", corpus_dir, f"optim={optim}", f"optim.lr={LEARNING_RATES[optim]}",
              "max_steps=30", *extra)  # fmt: skip
    records = read_metrics(tmp_path / "run")
    assert records[-1]["train/loss"] < records[0]["train/loss"] - 0.5
    refreshes = [r for r in records if "hess/refresh_flops" in r]
    if optim not in SECOND_ORDER:
        assert not refreshes and records[-1]["hess/flops"] == 0
        return
    # Sophia-H takes its estimates before the steps that use them: none after the last step.
    expected = 30 // HESS_INTERVAL - (optim == "sophiah")
    assert len(refreshes) == expected
    assert all(r["hess/refresh_flops"] > 0 and r["hess/refresh_skipped"] == 0 for r in refreshes)
    flops_per_refresh = refreshes[-1]["hess/refresh_flops"]
    assert records[-1]["hess/flops"] == pytest.approx(expected * flops_per_refresh)
    assert 0 < records[-1]["hess/time_s"] < records[-1]["time_s"]


def refresh_schedule(optim: str, interval: int, source: str) -> dict[str, list[int]]:
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, vocab_size=64, block_size=16))
    cfg = OPTIMIZERS[optim](hess_interval=interval, hess_source=source)
    opt = cfg.build(model, device=torch.device("cpu"), estimation_tokens=4 * 32)
    return {
        "before": [step for step in range(9) if opt.refreshes_hessian_before(step)],
        "after": [step for step in range(9) if opt.refreshes_hessian(step)],
        "in": [step for step in range(9) if opt.estimates_on_training_batch(step)],
    }


@pytest.mark.parametrize("source", ["train", "fresh"])
@pytest.mark.parametrize("interval", [1, 3])
def test_adahessian_refreshes_once_per_k_steps_from_step_zero(interval, source):
    """Before steps 0, k, 2k, ... and never after: with k = 1 step 0 gets one refresh, not two
    (an initial one and the after-step one, on the same estimation batch). On the training batch
    the step's own pass estimates, at the same steps and weights."""
    schedule = refresh_schedule("adahessian", interval, source)
    expected = {"before": [], "after": [], "in": []}
    expected["in" if source == "train" else "before"] = list(range(0, 9, interval))
    assert schedule == expected


@pytest.mark.parametrize("interval", [1, 3])
def test_sophia_h_estimates_at_the_same_weights_from_either_source(interval):
    """A fresh refresh after steps k-1, 2k-1, ... and a training-batch one inside steps k, 2k,
    ... are taken at the same weights, each before the step that first uses it."""
    fresh, train = (
        refresh_schedule("sophiah", interval, "fresh"),
        refresh_schedule("sophiah", interval, "train"),
    )
    assert fresh == {"before": [], "after": list(range(interval - 1, 9, interval)), "in": []}
    assert train == {"before": [], "after": [], "in": list(range(interval, 9, interval))}


def test_adahessian_every_step_refreshes_once_per_step_in_a_run(tmp_path, corpus_dir):
    run_train(tmp_path / "run", corpus_dir, "optim=adahessian", "optim.hess_interval=1",
              "max_steps=3")  # fmt: skip
    records = [r for r in read_metrics(tmp_path / "run") if "hess/refresh_flops" in r]
    assert [r["step"] for r in records] == [1, 2, 3]
    for record in records:
        assert record["hess/flops"] == pytest.approx(record["step"] * record["hess/refresh_flops"])


@pytest.mark.parametrize(
    ("optim", "extra"), [*((optim, ()) for optim in SECOND_ORDER),
                         ("sophiah", ("optim.hess_source=fresh",))],
)  # fmt: skip
def test_resume_continues_exactly(tmp_path, corpus_dir, optim, extra):
    common = [f"optim={optim}", f"optim.lr={LEARNING_RATES[optim]}", "optim.decay_steps=10",
              "optim.hess_interval=3", "ckpt_interval=100", "eval_interval=100"]  # fmt: skip
    common += extra
    run_train(tmp_path / "whole", corpus_dir, "max_steps=10", *common)
    run_train(tmp_path / "split", corpus_dir, "max_steps=6", *common)
    optimizer_state = torch.load(
        tmp_path / "split" / "checkpoints" / "step_00000006" / "optimizer.pt", weights_only=True
    )
    hessian_key = "exp_hessian_diag_sq" if optim == "adahessian" else "hessian"
    states = optimizer_state["optimizer"]["state"].values()
    assert all(state[hessian_key].abs().sum() > 0 for state in states)
    run_train(tmp_path / "split", corpus_dir, "max_steps=10", *common)
    whole, split = losses(tmp_path / "whole"), losses(tmp_path / "split")
    assert list(split) == list(range(1, 11))
    for step in range(7, 11):
        assert split[step] == whole[step]


@pytest.mark.parametrize(
    ("optim", "rule", "estimator"),
    [("adamw", "AdamW", None), ("lion", "Lion", None), ("sophia", "SophiaG", GaussNewtonBartlett),
     ("sophiah", "SophiaH", Hutchinson), ("adahessian", "AdaHessian", Hutchinson),
     ("muon", "MuonAdamW", None)],
)  # fmt: skip
def test_builder_pairs_each_rule_with_its_estimator(optim, rule, estimator):
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, vocab_size=64, block_size=16))
    cfg = OPTIMIZERS[optim]()
    opt = cfg.build(model, device=torch.device("cpu"), estimation_tokens=4 * 32)
    assert type(opt.optimizer).__name__ == rule
    assert (opt.estimator is None) if estimator is None else isinstance(opt.estimator, estimator)
    decays = [group["weight_decay"] for group in opt.optimizer.param_groups]
    # Muon: its matrices, then the AdamW half's decayed embedding and undecayed vectors.
    expected = [cfg.weight_decay] * (1 + (optim == "muon")) + [0.0]
    assert decays == expected
    if estimator is not None:
        assert opt.hess_interval == cfg.hess_interval
    # Sophia-G's bs is the training batch's token count, never the official 480 x 1024.
    assert opt.step_kwargs == ({"bs": 4 * 32} if optim == "sophia" else {})


def test_sophia_g_scales_its_hessian_by_the_estimation_batch():
    """ĝ is a mean over the estimation batch's B tokens and B·ĝ⊙ĝ is the Gauss-Newton estimate:
    with optim.hess_batch_size at half the batch, bs must be half the training tokens, or rho
    would silently double."""
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, vocab_size=64, block_size=16))
    opt = OPTIMIZERS["sophia"]().build(model, device=torch.device("cpu"), estimation_tokens=2 * 32)
    assert opt.step_kwargs == {"bs": 2 * 32}


@pytest.mark.parametrize("optim", ["sophiah", "adahessian"])
def test_hutchinson_takes_its_probe_count_from_the_config(optim):
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, vocab_size=64, block_size=16))
    cfg = OPTIMIZERS[optim](n_probes=3)
    opt = cfg.build(model, device=torch.device("cpu"), estimation_tokens=4 * 32)
    assert opt.estimator.n_probes == 3


def test_muon_resumes_exactly_and_counts_its_orthogonalization(tmp_path, corpus_dir):
    common = ["optim=muon", f"optim.lr={LEARNING_RATES['muon']}", "optim.decay_steps=10",
              "ckpt_interval=100", "eval_interval=100"]  # fmt: skip
    run_train(tmp_path / "whole", corpus_dir, "max_steps=10", *common)
    run_train(tmp_path / "split", corpus_dir, "max_steps=6", *common)
    run_train(tmp_path / "split", corpus_dir, "max_steps=10", *common)
    whole, split = losses(tmp_path / "whole"), losses(tmp_path / "split")
    for step in range(7, 11):
        assert split[step] == whole[step]
    last = read_metrics(tmp_path / "whole")[-1]
    facts = json.loads((tmp_path / "whole" / "run.json").read_text())
    model_flops = 10 * facts["flops_per_token"] * facts["tokens_per_step"]
    assert last["flops"] > model_flops  # the Newton-Schulz iterations are compute too


def test_sophia_logs_its_warmed_share_and_win_rates_per_kind(tmp_path, corpus_dir):
    run_train(tmp_path / "run", corpus_dir, "optim=sophia", "optim.hess_interval=2",
              "max_steps=10", "log_interval=5")  # fmt: skip
    records = [r for r in read_metrics(tmp_path / "run") if "optim/win_rate" in r]
    beta2 = OPTIMIZERS["sophia"]().betas[1]
    assert [r["optim/hessian_warmed"] for r in records] == pytest.approx(
        [1 - beta2**2, 1 - beta2**5]
    )
    for kind in ("embeddings", "matrices", "vectors"):
        assert 0 <= records[-1][f"optim/win_rate_{kind}"] <= 1
