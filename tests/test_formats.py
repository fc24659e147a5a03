"""Researchers' own files and losses, written by the real libraries: .safetensors, HuggingFace save_pretrained
folders (one file, shards, .bin), Lightning and torchvision-references checkpoints; criteria as written; output-unit
filter norms for (in, out) weights; files sized to what moves; widths that say when they are bounds; re-plots
that write where they are told; strict JSON."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers
from safetensors.torch import save_file

import landscape
from landscape.base.flags import run_cli
from landscape.core.surface_file import read_surface
from tests import userland
from tests.conftest import cli_env, tree_digest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GRID = ["--x=-1:1:3", "--y=-1:1:3", "--no-progress", "--formats", "png", "--device", "cpu"]
USER = ["--model", "tests.userland:make_mlp", "--data", "tests.userland:loader"]


def _cli(module: str, *argv: str) -> None:
    main = __import__(module, fromlist=["main"]).main
    run_cli(main, list(argv))


def _refused(capsys, module: str, argv: list[str], words: str, folder) -> None:
    """One line naming the problem, exit 2, no traceback, and nothing that existed changed."""
    before = tree_digest(folder)
    capsys.readouterr()  # what libraries printed while the files were made
    with pytest.raises(SystemExit) as exc:
        _cli(module, *argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert exc.value.code == 2 and len(lines) == 1 and words in lines[0], err
    assert "Traceback" not in err and "\x1b[" not in err
    after = tree_digest(folder)
    assert {p: h for p, h in after.items() if p in before} == before


@pytest.fixture
def mlp_weights(tmp_path):
    model = userland.make_mlp()
    torch.save(model.state_dict(), tmp_path / "w.pt")
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    return model, tmp_path


def test_safetensors_equal_pt_and_a_same_stem_clash_is_refused_before_computing(mlp_weights, capsys):
    model, d = mlp_weights
    _cli("landscape.plot2d", str(d / "w.pt"), *USER, *GRID, "--out", str(d / "o"))
    pt = read_surface(str(d / "o" / f"{d.name}_w_2d.h5"))
    _cli("landscape.plot2d", str(d / "w.safetensors"), *USER, *GRID, "--out", str(d / "s"))
    st = read_surface(str(d / "s" / f"{d.name}_w_2d.h5"))
    assert np.array_equal(pt.values["loss"], st.values["loss"])
    loaded = landscape.load_weights(str(d / "w.safetensors"), userland.make_mlp(width=16))
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    # the same output name from another file: refused before anything is evaluated (no "centre:" line)
    _refused(capsys, "landscape.plot2d", [str(d / "w.safetensors"), *USER, *GRID, "--out", str(d / "o")],
             "another checkpoint", d)
    assert "centre:" not in capsys.readouterr().out


def _gpt2() -> transformers.GPT2LMHeadModel:
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=101, n_positions=32, n_embd=32, n_layer=2, n_head=2,
                                     bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(config).eval()


@pytest.mark.parametrize("layout", ["single", "sharded", "bin"])
def test_huggingface_folders_load_without_model_and_tied_weights_are_not_missing(tmp_path, layout, capsys):
    model, folder = _gpt2(), tmp_path / layout
    if layout == "bin":  # what transformers < 5 wrote: the state dict under pytorch_model.bin
        model.config.architectures = ["GPT2LMHeadModel"]  # as save_pretrained records it
        model.config.save_pretrained(folder)
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    else:
        model.save_pretrained(folder, max_shard_size="40KB" if layout == "sharded" else "5GB")
    assert layout != "sharded" or (folder / "model.safetensors.index.json").exists()
    loaded = landscape.load_weights(str(folder))
    assert type(loaded) is transformers.GPT2LMHeadModel
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    assert loaded.lm_head.weight is loaded.transformer.wte.weight  # still tied
    if layout == "single":
        _cli("landscape.plot1d", str(folder), "--data", "tests.userland:tokens", "--metric", "causal_lm",
             "--x=-0.5:0.5:3", "--no-progress", "--formats", "png", "--device", "cpu", "--out", str(tmp_path / "o"))
        s = read_surface(str(tmp_path / "o" / f"{tmp_path.name}_single_1d.h5"))
        batches = userland.tokens()
        with torch.no_grad():
            want = np.mean([float(model(**b).loss) for b in batches])  # equal token counts per batch
        assert s.values["loss"][1] == pytest.approx(want, rel=1e-5)


def test_huggingface_bad_folders_are_one_line(tmp_path, capsys):
    model = _gpt2()
    model.save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
    shard = sorted(p for p in os.listdir(tmp_path / "sharded") if p.endswith(".safetensors"))[1]
    os.remove(tmp_path / "sharded" / shard)
    (tmp_path / "noconfig").mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"},
              str(tmp_path / "noconfig" / "model.safetensors"))
    model.save_pretrained(tmp_path / "remote")
    cfg = json.loads((tmp_path / "remote" / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_mine.MyModel"}
    (tmp_path / "remote" / "config.json").write_text(json.dumps(cfg))
    common = ["--data", "tests.userland:tokens", "--metric", "causal_lm", "--out", str(tmp_path / "o"), *GRID]
    _refused(capsys, "landscape.plot2d", [str(tmp_path / "sharded"), *common], "lacks 1 of the", tmp_path)
    _refused(capsys, "landscape.plot2d", [str(tmp_path / "noconfig"), *common], "without config.json", tmp_path)
    _refused(capsys, "landscape.plot2d", [str(tmp_path / "remote"), *common], "needs remote code", tmp_path)


def _lightning_checkpoint(path, twice: bool = False) -> None:
    """A real Lightning checkpoint: a LightningModule holding the network as self.model, a weighted loss (a buffer
    the network does not have), hyper-parameters with a Namespace; with `twice`, an EMA copy too."""
    import lightning as L

    class Classifier(L.LightningModule):
        def __init__(self, lr: float = 0.1, args: argparse.Namespace | None = None):
            super().__init__()
            self.save_hyperparameters()
            self.model = userland.make_mlp()
            if twice:
                self.ema = userland.make_mlp()
            self.loss_fn = torch.nn.CrossEntropyLoss(weight=torch.ones(3))

        def forward(self, x):
            return self.model(x)

        def training_step(self, batch, i):
            return self.loss_fn(self(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", default_root_dir=str(path.parent))
    module = Classifier(args=argparse.Namespace(epochs=1))
    trainer.fit(module, userland.loader())
    trainer.save_checkpoint(str(path))
    return module


def test_lightning_checkpoint_finds_its_prefix_and_says_so(tmp_path, capsys):
    module = _lightning_checkpoint(tmp_path / "run.ckpt")
    _cli("landscape.plot2d", str(tmp_path / "run.ckpt"), *USER, *GRID, "--out", str(tmp_path / "o"))
    out = capsys.readouterr().out
    assert "under 'model.'" in out and "left aside (e.g. loss_fn.weight)" in out
    loaded = landscape.load_weights(str(tmp_path / "run.ckpt"), userland.make_mlp())
    for k, v in module.model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    explicit = landscape.load_weights(str(tmp_path / "run.ckpt"), userland.make_mlp(), strip_prefix="model.")
    assert all(torch.equal(a, b) for a, b in zip(explicit.state_dict().values(), loaded.state_dict().values()))
    _refused(capsys, "landscape.plot2d", [str(tmp_path / "run.ckpt"), *USER, "--strip-prefix", "net.", *GRID,
                                          "--out", str(tmp_path / "p")], "matches no tensor", tmp_path)
    _lightning_checkpoint(tmp_path / "two.ckpt", twice=True)
    _refused(capsys, "landscape.plot2d", [str(tmp_path / "two.ckpt"), *USER, *GRID, "--out", str(tmp_path / "q")],
             "under 2 prefixes ('ema.', 'model.')", tmp_path)
    ema = landscape.load_weights(str(tmp_path / "two.ckpt"), userland.make_mlp(), strip_prefix="ema.")
    assert isinstance(ema, torch.nn.Sequential)


def test_torchvision_references_checkpoint_model_and_ema_and_unknown_globals(tmp_path, capsys):
    """Saved as vision's references/classification/train.py saves it: model, model_ema (an AveragedModel, keys
    under module. plus n_averaged), optimizer, lr_scheduler, epoch and args (an argparse.Namespace)."""
    from lightning.fabric.utilities.data import AttributeDict

    model = userland.make_mlp()
    ema = torch.optim.swa_utils.AveragedModel(model)
    with torch.no_grad():
        for p in ema.parameters():
            p.mul_(0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ckpt = {"model": model.state_dict(), "model_ema": ema.state_dict(), "optimizer": opt.state_dict(),
            "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, 3).state_dict(), "epoch": 3,
            "args": argparse.Namespace(lr=0.1, data_path="/data/imagenet", model="mlp")}
    torch.save(ckpt, tmp_path / "checkpoint.pth")
    plain = landscape.load_weights(str(tmp_path / "checkpoint.pth"), userland.make_mlp())
    averaged = landscape.load_weights(str(tmp_path / "checkpoint.pth"), userland.make_mlp(), ema=True)
    for k, v in model.state_dict().items():
        assert torch.equal(plain.state_dict()[k], v) and torch.equal(averaged.state_dict()[k], v * 0.5), k
    _cli("landscape.plot2d", str(tmp_path / "checkpoint.pth"), *USER, "--ema", *GRID, "--out", str(tmp_path / "o"))
    ckpt["hparams"] = AttributeDict(lr=0.1)  # Lightning's, on the allow-list
    torch.save(ckpt, tmp_path / "hparams.pth")
    assert isinstance(landscape.load_weights(str(tmp_path / "hparams.pth"), userland.make_mlp()), torch.nn.Module)
    ckpt["started"] = datetime.datetime(2026, 11, 27)  # not on the allow-list
    torch.save(ckpt, tmp_path / "odd.pth")
    _refused(capsys, "landscape.plot2d", [str(tmp_path / "odd.pth"), *USER, *GRID, "--out", str(tmp_path / "p")],
             "holds pickled datetime.datetime", tmp_path)


def test_criteria_as_written_equal_their_own_means(tmp_path, capsys):
    x, y = userland.tensors()
    model = userland.make_mlp()
    with torch.no_grad():
        want = float(torch.nn.functional.cross_entropy(model(x), y, label_smoothing=0.1))
    torch.save(model.state_dict(), tmp_path / "w.pt")
    for i, flags in enumerate([["--criterion", "torch.nn:CrossEntropyLoss", "--criterion-kwargs",
                                '{"label_smoothing": 0.1}'], ["--criterion", "tests.userland:smoothed_ce"]]):
        _cli("landscape.plot1d", str(tmp_path / "w.pt"), *USER, *flags, "--x=-1:1:3", "--no-progress", "--formats",
             "png", "--device", "cpu", "--out", str(tmp_path / f"o{i}"))
        assert "criterion" in capsys.readouterr().out
        s = read_surface(str(tmp_path / f"o{i}" / f"{tmp_path.name}_w_1d.h5"))
        assert s.values["loss"][1] == pytest.approx(want, rel=1e-6)
        assert "acc" in s.values
    s = landscape.surface(model, (x, y), landscape.random_directions(model, n=1), x=[0.0],
                          metrics=landscape.Criterion(torch.nn.CrossEntropyLoss(label_smoothing=0.1)), progress=False)
    assert s.values["loss"][0] == pytest.approx(want, rel=1e-6)
    _refused(capsys, "landscape.plot1d", [str(tmp_path / "w.pt"), *USER, "--criterion", "tests.userland:per_sample",
                                          "--out", str(tmp_path / "bad")], "not one number", tmp_path)
    _refused(capsys, "landscape.sharpness", [str(tmp_path / "w.pt"), *USER, "--loss-name", "nope", "--measures",
                                             "lambda_max", "--out", str(tmp_path / "bad2")], "--loss-name 'nope'",
             tmp_path)


@pytest.mark.parametrize("flags", [["--criterion", "torch.nn:CrossEntropyLoss", "--criterion-kwargs",
                                    '{"label_smoothing": 0.1}'], ["--criterion", "tests.userland:smoothed_ce"],
                                   ["--metric", "tests.userland:margin"]])
def test_plot2d_and_sharpness_take_criteria_and_metrics_whose_loss_has_another_name(tmp_path, capsys, flags):
    torch.save(userland.make_mlp().state_dict(), tmp_path / "w.pt")
    _cli("landscape.plot2d", str(tmp_path / "w.pt"), *USER, *flags, *GRID, "--loss-max", "0.5",
         "--out", str(tmp_path / "o"))
    s = read_surface(str(tmp_path / "o" / f"{tmp_path.name}_w_2d.h5"))
    loss = "margin" if "--metric" in flags else "loss"
    assert s.loss_metrics() == [loss] and s.done.all()
    assert (tmp_path / "o" / f"{tmp_path.name}_w_2d_{loss}_contour.png").exists()
    capsys.readouterr()
    _cli("landscape.sharpness", str(tmp_path / "w.pt"), *USER, *flags, "--measures", "lambda_max", "adaptive",
         "width", "--width-directions", "2", "--device", "cpu", "--out", str(tmp_path / "o"))
    out = capsys.readouterr().out
    assert out.index("estimate: lambda_max") < out.index("estimate: ~") < out.index("[1/3]") < out.index("[3/3]")
    rows = json.loads((tmp_path / "o" / f"{tmp_path.name}_w_sharpness.json").read_text())["result"]["rows"]
    assert {r["measure"] for r in rows} == {"lambda_max", "adaptive_sharpness", "width", "width_hessian"}


def test_the_hessian_takes_a_metric_by_name_like_surface():
    from landscape.curvature.hessian import HessianOperator, eigenvalues
    from landscape.runtime.metrics import cross_entropy

    model, data = userland.make_mlp(), userland.tensors()
    by_name = eigenvalues(HessianOperator(model, data, "cross_entropy")).top[0]
    assert by_name == pytest.approx(eigenvalues(HessianOperator(model, data, cross_entropy)).top[0], rel=1e-9)
    lm = _gpt2()
    op = HessianOperator(lm, userland.tokens(), "causal_lm")  # 0.6: TypeError: 'str' object is not callable
    assert op.count == 2 * 4 * 11  # tokens predicted: 11 per sequence of 12


def test_gpt2_conv1d_gets_output_unit_filter_norms_like_linear():
    model = _gpt2()
    d = landscape.random_directions(model, n=1)[0]
    w = dict(model.named_parameters())
    conv1d = [n for n, m in model.named_modules() if type(m).__name__ == "Conv1D"]
    assert conv1d
    for name in conv1d:  # weight (in, out): an output unit is a column
        k = f"{name}.weight"
        assert torch.allclose(d[k].norm(dim=0), w[k].detach().norm(dim=0), rtol=1e-4), k
        assert not torch.allclose(d[k].norm(dim=1), w[k].detach().norm(dim=1), rtol=1e-2)
    # the same layer written as nn.Linear (weight (out, in)) gets the same per-neuron norms
    lin = torch.nn.Linear(32, 96)
    with torch.no_grad():
        lin.weight.copy_(w[f"{conv1d[0]}.weight"].T)
    dl = landscape.random_directions(torch.nn.Sequential(lin), n=1)[0]["0.weight"]
    assert torch.allclose(dl.norm(dim=1), d[f"{conv1d[0]}.weight"].norm(dim=0), rtol=1e-4)
    up = torch.nn.Sequential(torch.nn.ConvTranspose2d(4, 6, 3))  # weight (in 4, out 6, 3, 3)
    du = landscape.random_directions(up, n=1)[0]["0.weight"]
    assert torch.allclose(du.transpose(0, 1).reshape(6, -1).norm(dim=1),
                          up[0].weight.detach().transpose(0, 1).reshape(6, -1).norm(dim=1), rtol=1e-4)


def test_a_subset_file_stores_only_what_moves(tmp_path):
    import torchvision

    model = torchvision.models.resnet18(num_classes=10).eval()
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    d = landscape.random_directions(model, n=2, params="fc.*")
    s = landscape.surface(model, (x, y), d, x="-1:1:3", y="-1:1:3", out=str(tmp_path / "fc.h5"), progress=False)
    assert os.path.getsize(tmp_path / "fc.h5") < 1 << 20  # 89.5 MB when every tensor was stored
    back = landscape.read_directions(str(tmp_path / "fc.h5"))
    assert set(back[0]) == set(d[0]) and all(np.array_equal(back[0][k], d[0][k].numpy()) for k in d[0])
    assert s.done.all()


def test_widths_at_the_edge_are_extended_or_marked_lower_bounds(mlp_ckpt, tmp_path):
    from landscape.base.config import SurfaceConfig
    from landscape.curvature.sharpness import basin_1d, next_axis
    from landscape.pipelines.sharpness_table import SharpnessConfig, run_sharpness, table_text
    from tests.conftest import SINGLE

    a = np.linspace(-1, 1, 21)
    edge = basin_1d(a, a**2 * 0.01, 0.1)  # the basin is wider than the axis
    assert edge.capped and np.allclose(next_axis(a, edge, 8.0), np.linspace(-2, 2, 21))
    assert next_axis(np.linspace(-8, 8, 21), basin_1d(np.linspace(-8, 8, 21), a**2 * 0.01, 0.1), 8.0) is None
    narrow = basin_1d(a, 1000 * a**2, 0.1)  # width 0.02 under two steps of 0.1
    assert not narrow.capped and next_axis(a, narrow, 8.0)[-1] < 0.1
    assert basin_1d(np.linspace(-0.1, 0.1, 21), 1000 * np.linspace(-0.1, 0.1, 21)**2, 0.1).width == pytest.approx(
        2 * 0.01, rel=0.02)  # 1000 a^2 = 0.1 at |a| = 0.01
    cfg = SurfaceConfig(mlp_ckpt, splits=("train",), out=str(tmp_path), progress=False)
    run = run_sharpness(cfg, SharpnessConfig(measures=("width",), width_directions=2, x="-0.0001:0.0001:5"),
                        SINGLE, log=lambda _: None)
    widths = {r["measure"]: r for r in run.rows}
    assert widths["width"]["bound"] == "lower" and widths["width"]["settings"]["capped"] == 2
    assert widths["width"]["settings"]["spans"][0] == pytest.approx(0.0008)  # doubled three times, then bounded
    assert ">= " in table_text(run.rows)
    stored = open(run.json).read()
    assert "NaN" not in stored and json.loads(stored, parse_constant=lambda c: pytest.fail(c))


def test_a_replot_writes_only_where_it_is_told(mlp_ckpt, tmp_path):
    _cli("landscape.plot2d", mlp_ckpt, *GRID, "--out", str(tmp_path / "a"))
    h5 = next(p for p in os.listdir(tmp_path / "a") if p.endswith(".h5"))
    before = tree_digest(tmp_path / "a")
    _cli("landscape.plot2d", str(tmp_path / "a" / h5), "--loss-max", "0.5", "--formats", "png", "--out",
         str(tmp_path / "b"), "--name", "clipped")
    assert tree_digest(tmp_path / "a") == before
    made = os.listdir(tmp_path / "b")
    assert "clipped_train_loss_contour.png" in made and all(f.startswith("clipped_") for f in made)


def test_loss_max_is_a_flat_cap_not_holes():
    from landscape.drawing.artists import capped

    z = np.array([[0.1, np.inf], [5.0, np.nan]])
    done = np.array([[True, True], [True, False]])
    out = capped(z, done, 1.0)
    assert out[0, 0] == 0.1 and out[0, 1] == 1.0 and out[1, 0] == 1.0 and np.isnan(out[1, 1])


def test_a_folder_named_landscape_does_not_shadow_the_package(tmp_path):
    """A clone in a folder named `landscape`, Python started from that folder's parent: the installed package
    (an editable install in compat mode) must win over the folder taken as a namespace package."""
    os.symlink(ROOT, tmp_path / "landscape")
    code = "import landscape, sys; print(landscape.__file__); landscape.surface"
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=cli_env(),
                         timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().endswith(os.path.join("landscape", "__init__.py"))


def test_the_hash_taken_from_the_one_read_is_weights_sha256_of_the_file(tmp_path, mlp_ckpt):
    """What a surface file records as checkpoint_sha256 (read once, hashed from the bytes parsed) is the file hash of
    0.6, so a file made by 0.6 resumes: a .pt, a .safetensors, a sharded save_pretrained folder, our checkpoint."""
    from landscape.models.checkpoint_file import read_checkpoint
    from landscape.models.formats import read_weights_into, weights_sha256

    model = userland.make_mlp(width=16)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    gpt2 = _gpt2()
    gpt2.save_pretrained(tmp_path / "hf", max_shard_size="40KB")  # config, index and shards, hashed in order
    for path, target in [("w.pt", model), ("w.safetensors", model), ("hf", gpt2)]:
        _, sha = read_weights_into(target, str(tmp_path / path))
        assert sha == weights_sha256(str(tmp_path / path)), path
    assert read_checkpoint(mlp_ckpt)[1] == weights_sha256(mlp_ckpt)


def test_each_weights_format_is_recognised_by_its_own_detection_and_a_user_s_format_is_tried_first(tmp_path):
    import hashlib

    from landscape.models.formats import FORMATS, WeightsFormat, find_format, register_format, weights_sha256
    from landscape.pipelines.inputs import centre_of

    model = userland.make_mlp()
    torch.save({"state_dict": model.state_dict()}, tmp_path / "w.pt")
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=16))
    hf.save_pretrained(tmp_path / "hf")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps({"train_config": {}}))
    found = {p: find_format(str(tmp_path / p)).name for p in ("w.pt", "w.safetensors", "hf", "run")}
    assert found == {"w.pt": "torch", "w.safetensors": "safetensors", "hf": "huggingface", "run": "run_folder"}
    assert find_format(str(tmp_path / "nothing.pt")) is None

    def read_npz(path, digest, ema):  # a format of the user's: numpy's archive of named arrays
        with open(path, "rb") as f:
            digest.update(f.read())
        return {k: torch.from_numpy(v) for k, v in np.load(path).items()}

    np.savez(tmp_path / "w.npz", **{k: v.numpy() for k, v in model.state_dict().items()})
    register_format(WeightsFormat("npz", detect=lambda p: p.endswith(".npz"), files=lambda p: [p], read=read_npz))
    try:
        with pytest.raises(ValueError, match="registered already"):
            register_format(FORMATS["npz"])
        other = userland.make_mlp()
        torch.nn.init.zeros_(other[0].weight)
        centre = centre_of(str(tmp_path / "w.npz"), other, log=lambda _: None)
        assert all(torch.equal(centre.model.state_dict()[k], v) for k, v in model.state_dict().items())
        assert centre.sha256 == weights_sha256(str(tmp_path / "w.npz")) == hashlib.sha256(
            (tmp_path / "w.npz").read_bytes()).hexdigest()
    finally:
        FORMATS.pop("npz", None)
    assert find_format(str(tmp_path / "w.npz")).name == "torch"  # back to the built-ins: a pickle, refused as such
