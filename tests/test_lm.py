"""Language models end to end: the models, the corpora (the grammar's known entropy, text files, token shards),
the trainer on sequences, and the surface, Hessian and sharpness tools on their checkpoints with no new flags."""

import json
import math
import os
from dataclasses import replace

import numpy as np
import pytest
import torch

from landscape.base.errors import UserError
from landscape.core.params import model_tensors
from landscape.curvature.hessian import HessianOperator, eigenvalues
from landscape.data import corpus
from landscape.data.datasets import load_dataset
from landscape.models.checkpoint_file import load_data_for, load_model
from landscape.models.registry import build_model, list_models
from landscape.runtime.metrics import get_metric
from tests.conftest import SINGLE, killed_at_epoch, run_module
from trainers import loop
from trainers.config import TrainConfig
from trainers.loop import fit

LM_MODELS = [n for n in list_models() if n.startswith(("transformer", "lstm"))]
SMALL_GRAMMAR = {"seq_len": 16, "train_tokens": 8192, "val_tokens": 2048}


def lm_config(out, **kw) -> TrainConfig:
    base = TrainConfig(out=str(out), dataset="grammar", data_kwargs=SMALL_GRAMMAR, model="transformer",
                       model_kwargs={"d_model": 16, "n_layer": 1, "n_head": 2}, optimizer="adamw", lr=3e-3,
                       weight_decay=0.1, batch_size=32, epochs=2, progress=False)
    return replace(base, **kw)


@pytest.mark.parametrize("name", LM_MODELS)
def test_language_models_are_causal_and_shaped(name):
    kwargs = {"d_model": 16, "n_layer": 1, "n_head": 2} if name.startswith("transformer") else {}
    if name.startswith("lstm"):
        kwargs = {"d_model": 8, "hidden": 8, "n_layer": 1}
    model = build_model(name, num_classes=11, input_shape=[12], **kwargs).eval()
    x = torch.randint(0, 11, (3, 12))
    changed = x.clone()
    changed[:, 7] = (changed[:, 7] + 1) % 11
    with torch.no_grad():
        a, b = model(x), model(changed)
    assert a.shape == (3, 12, 11)
    torch.testing.assert_close(a[:, :7], b[:, :7], atol=1e-6, rtol=0)  # the past does not see the future
    assert (a[:, 7:] - b[:, 7:]).abs().max() > 1e-4


def test_rotary_positions_and_tied_weights():
    model = build_model("transformer", num_classes=9, input_shape=[8], d_model=16, n_head=2, n_layer=1,
                        positions="rotary", tie_weights=True)
    assert model.head.weight is model.tok.weight and "pos.weight" not in dict(model.named_parameters())
    assert len(model_tensors(model, "states")) == len(dict(model.named_parameters()))  # the shared tensor once
    x = torch.randint(0, 9, (2, 8))
    shifted = torch.cat([x[:, :1], x[:, :-1]], 1)  # same tokens, other positions: rotary makes outputs differ
    assert not torch.allclose(model(x)[:, -1], model(shifted)[:, -1])


def test_grammar_entropy_rate_is_the_limit_of_the_exact_best_loss():
    g = corpus.build_grammar(0)
    assert g.stationary @ g.next_class == pytest.approx(g.stationary)
    stream = torch.from_numpy(g.sample(40_000, seed=5).astype(np.int64))
    short = g.best_loss(*corpus.windows(stream, 8, "s"))
    long = g.best_loss(*corpus.windows(stream, 2000, "s"))
    # two independent computations, a closed form and the forward algorithm on sampled text, meet at long context
    assert long == pytest.approx(g.entropy_rate, rel=0.01)  # a sample's mean: above or below it by noise
    assert short > 1.2 * long  # 8 characters of context do not tell the words before them
    words = corpus.decode(stream[:2000]).split()
    assert set(words) <= set(g.words)


def test_grammar_dataset_is_deterministic_and_its_windows_continue_the_stream():
    a = load_dataset("grammar", **SMALL_GRAMMAR)
    b = load_dataset("grammar", **SMALL_GRAMMAR)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.x_train[:10], a.x_test[:10])  # validation is another sample of the language
    assert a.x_train.shape == (8191 // 16, 16) and a.num_classes == len(corpus.ALPHABET)
    assert torch.equal(a.y_train[:, :-1], a.x_train[:, 1:])  # targets are the next tokens
    assert torch.equal(a.y_train[:-1, -1], a.x_train[1:, 0])  # and each window starts where the last one ended
    assert a.metric == "next_token" and a.tokens_per_sample == 16


def test_text_file_and_token_shards(tmp_path):
    text = tmp_path / "book.txt"
    text.write_text("It was the best of times, it was the worst of times. " * 40)
    d = load_dataset("text", path=str(text), seq_len=32, val_fraction=0.25)
    raw = text.read_bytes()
    assert bytes(d.x_train[0].tolist()) == raw[:32] and d.num_classes == 256
    assert bytes(d.x_test[0].tolist()) == raw[int(len(raw) * 0.75):][:32]
    tokens = np.arange(5000) % 300
    folder = tmp_path / "shards"
    folder.mkdir()
    np.save(folder / "train_000.npy", tokens[:3000].astype(np.uint16))
    np.save(folder / "train_001.npy", tokens[3000:4000].astype(np.uint16))
    tokens[4000:].astype(np.uint16).tofile(folder / "val.bin")  # raw uint16, as nanoGPT writes it
    s = load_dataset("tokens", path=str(folder), seq_len=64)
    assert s.num_classes == 300 and not s.resident
    assert torch.equal(s.x_train[10].long(), torch.arange(640, 704) % 300)
    assert torch.equal(s.y_test[0].long(), torch.arange(4001, 4065) % 300)
    header = np.zeros(256, np.int32)
    header[:3] = [corpus.LLMC_MAGIC, 1, 1000]
    llmc = tmp_path / "llmc"
    llmc.mkdir()
    for split in ("train", "val"):
        with open(llmc / f"fineweb_{split}_000000.bin", "wb") as f:
            f.write(header.tobytes() + tokens[:1000].astype(np.uint16).tobytes())
    assert torch.equal(load_dataset("tokens", path=str(llmc), seq_len=10, vocab_size=400).x_test[1].long(),
                       torch.arange(10, 20))
    with pytest.raises(UserError, match="vocab_size"):
        load_dataset("tokens", path=str(folder), vocab_size=100)
    with pytest.raises(UserError, match="not found"):
        load_dataset("text", path=str(tmp_path / "missing.txt"))


def test_trainer_on_a_transformer_is_token_weighted_and_resumes_bit_exactly(tmp_path, monkeypatch):
    cfg = lm_config(tmp_path / "cut", epochs=3, warmup_epochs=1, schedule="cosine", model_kwargs={
        "d_model": 16, "n_layer": 1, "n_head": 2, "dropout": 0.1})  # dropout: the RNG state must resume too
    full = fit(replace(cfg, out=str(tmp_path / "full")), SINGLE)
    real = loop.train_one_epoch
    monkeypatch.setattr(loop, "train_one_epoch", killed_at_epoch(real, 2))  # epochs 0, 1 saved
    with pytest.raises(KeyboardInterrupt):
        fit(cfg, SINGLE)
    monkeypatch.setattr(loop, "train_one_epoch", real)
    resumed = fit(replace(cfg, resume=True), SINGLE)
    for k, v in full["state_dict"].items():
        assert torch.equal(v, resumed["state_dict"][k]), k
    assert json.load(open(tmp_path / "cut" / "config.json"))["train_config"]["optimizer"] == "adamw"
    m = full["metrics"]
    assert m["test_ppl"] == pytest.approx(math.exp(m["test_loss"]))
    model, ckpt = load_model(str(tmp_path / "full" / "last.pt"))  # eval mode: no dropout
    data = load_data_for(ckpt)
    with torch.no_grad():
        logits = model(data.x_test)
    token_mean = torch.nn.functional.cross_entropy(logits.flatten(0, 1), data.y_test.flatten()).item()
    assert m["test_loss"] == pytest.approx(token_mean, rel=1e-5)
    record = json.loads(open(tmp_path / "full" / "metrics.jsonl").readline())
    assert record["tokens_per_second"] == pytest.approx(record["images_per_second"] * 16)


@pytest.mark.parametrize("name", ["transformer", "lstm_lm"])
def test_hessian_of_a_language_model_equals_the_dense_hessian(name):
    torch.manual_seed(0)
    kwargs = {"d_model": 4, "n_layer": 1, "n_head": 2, "mlp_ratio": 1} if name == "transformer" else \
        {"d_model": 3, "hidden": 3}
    model = build_model(name, num_classes=5, input_shape=[6], **kwargs).double().eval()
    x, y = torch.randint(0, 5, (8, 6)), torch.randint(0, 5, (8, 6))
    metric = get_metric("next_token")
    op = HessianOperator(model, (x, y), metric, batch_size=3)
    flat0 = op.weights()

    def loss(flat):
        sums = op.sums((x, y), flat)
        return sums["loss"] / sums["count"]

    from landscape.curvature.flat_loss import twice_differentiable

    with twice_differentiable(model):
        dense = torch.autograd.functional.hessian(loss, flat0)
    hv = op.matvec(torch.ones_like(flat0))
    torch.testing.assert_close(hv, dense @ torch.ones_like(flat0), atol=1e-8, rtol=1e-7)
    top = eigenvalues(op, k=1, tol=1e-10).top[0]
    assert top == pytest.approx(torch.linalg.eigvalsh(dense)[-1].item(), rel=1e-6)


@pytest.mark.slow
def test_two_process_transformer_run_whose_validation_loss_the_surface_centre_reproduces(tmp_path):
    """The issue's done-when, small: torchrun 2 processes train a Transformer on the grammar corpus, and plot1d
    (its default metric: the corpus's token loss, no flag) finds the checkpoint's stored validation loss at 0."""
    args = ["--model", "transformer", "--model-kwargs", '{"d_model": 16, "n_layer": 1, "n_head": 2}',
            "--dataset", "grammar", "--data-kwargs", json.dumps(SMALL_GRAMMAR), "--optimizer", "adamw",
            "--lr", "3e-3", "--batch-size", "64", "--epochs", "1", "--no-progress", "--device", "cpu"]
    two = run_module("trainers.train", *args, "--out", str(tmp_path / "two"), nproc=2)
    one = run_module("trainers.train", *args, "--out", str(tmp_path / "one"))
    assert two.returncode == 0 and one.returncode == 0, two.stderr + one.stderr
    assert "sequences x 16 tokens = 1024 tokens" in two.stdout and "tok/s" in two.stdout
    a = torch.load(tmp_path / "one" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "two" / "last.pt", weights_only=True)
    for k in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][k], b["state_dict"][k], atol=1e-5, rtol=1e-4)
    surf = run_module("landscape.plot1d", str(tmp_path / "two" / "last.pt"), "--x=-0.2:0.2:3", "--splits", "train",
                      "test", "--out", str(tmp_path / "plots"), "--no-progress", "--formats", "png")
    assert surf.returncode == 0, surf.stderr
    import h5py

    with h5py.File(os.path.join(tmp_path / "plots", "two_last_1d.h5")) as f:
        assert f["test_loss"][1] == pytest.approx(b["metrics"]["test_loss"], rel=1e-5)
        assert f["test_ppl"][1] == pytest.approx(b["metrics"]["test_ppl"], rel=1e-5)
        assert json.loads(f.attrs["config"])["metric"] == "next_token"  # resolved from the corpus, recorded
