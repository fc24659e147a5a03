"""HuggingFace, proven: a causal LM built from a tiny config (no download, no hub), evaluated on padded random
token batches. `transformers` comes with the dev extra (pip install -e '.[hf]' for users)."""

import numpy as np
import pytest
import torch
import transformers

import landscape

VOCAB, T = 101, 12


def _tiny_gpt2() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=2, n_head=2)
    return transformers.GPT2LMHeadModel(config).eval()


def _batches() -> list[dict[str, torch.Tensor]]:
    """Three batches of 4 sequences, right-padded to T with lengths 5..12; padding is labelled -100."""
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(3):
        ids = torch.randint(0, VOCAB, (4, T), generator=g)
        lengths = torch.randint(5, T + 1, (4,), generator=g)
        mask = (torch.arange(T)[None, :] < lengths[:, None]).long()
        out.append({"input_ids": ids * mask, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)})
    return out


def test_centre_matches_the_models_own_token_weighted_loss():
    model, batches = _tiny_gpt2(), _batches()
    with torch.no_grad():
        losses = [(model(**b).loss.double(), (b["labels"][:, 1:] != -100).sum()) for b in batches]
    expected = float(sum(loss * n for loss, n in losses) / sum(n for _, n in losses))
    d = landscape.random_directions(model, n=1)
    s = landscape.surface(model, batches, d, x=[0.0], metrics="causal_lm", progress=False)
    assert list(s.values) == ["loss", "acc", "ppl"]
    assert s.values["loss"][0] == pytest.approx(expected, rel=1e-6, abs=1e-6)
    assert s.values["ppl"][0] == pytest.approx(np.exp(expected), rel=1e-6)


def test_a_surface_over_the_attention_blocks_only(tmp_path):
    model, batches = _tiny_gpt2(), _batches()
    d = landscape.random_directions(model, n=2, params="transformer.h.*.attn.*")
    moved = {k for k, v in d[0].items() if v.any()}
    assert moved and all(".attn." in k for k in moved)
    assert any(k.endswith("attn.c_attn.weight") for k in moved)
    s = landscape.surface(model, batches, d, x="-1:1:3", y="-1:1:3", metrics="causal_lm", out=str(tmp_path / "lm.h5"),
                          progress=False)
    assert s.done.all() and np.isfinite(s.values["loss"]).all()
    centre = landscape.surface(model, batches, d[:1], x=[0.0], metrics="causal_lm", progress=False)
    assert s.values["loss"][1, 1] == pytest.approx(centre.values["loss"][0], rel=1e-12)
    assert (s.values["loss"] != s.values["loss"][1, 1]).sum() == 8  # the attention weights moved the loss
    files = landscape.save_figures(s, str(tmp_path / "lm"), formats=("png",))
    assert len(files) == 12  # loss, acc, ppl x contour, filled, heatmap, 3d


def test_connect_joins_two_save_pretrained_folders_and_writes_the_bend_as_one(tmp_path):
    """A researcher's two GPT-2 folders: a curve trained between them on their own token batches, the bend written
    as a save_pretrained folder that plot2d's plane reads (and draws the curve on)."""
    for seed in (0, 1):
        torch.manual_seed(seed)
        config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=2, n_head=2)
        transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path / f"g{seed}")
    a, b = str(tmp_path / "g0"), str(tmp_path / "g1")
    curve = landscape.connect_checkpoints(a, b, str(tmp_path / "out"), data="tests.userland:tokens",
                                          metric="causal_lm", epochs=2, optimizer="adam", lr=1e-3,
                                          points=3, progress=False, device="cpu")
    assert list(curve.paths) == ["line", "curve"] and curve.paths["curve"].done.all()
    assert curve.paths["curve"].values["loss"][0] == curve.paths["line"].values["loss"][0]  # both start at A
    bend = next(p for p in (tmp_path / "out").iterdir() if p.name.endswith("_bend"))
    model = landscape.load_weights(str(bend))  # a save_pretrained folder, as the user's tools read it
    assert isinstance(model, transformers.GPT2LMHeadModel)
    from landscape.base.config import SurfaceConfig
    from landscape.pipelines.from_checkpoint import run_surface
    from tests.conftest import SINGLE

    plane = run_surface(SurfaceConfig(a, plane=(b, str(bend)), plane_points=3, data="tests.userland:tokens",
                                      metric="causal_lm", out=str(tmp_path), progress=False), SINGLE).surface
    assert plane.annotations.curve is not None and np.allclose(plane.annotations.curve[-1], [1.0, 0.0])


def llama_from_config() -> transformers.PreTrainedModel:
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    return transformers.LlamaForCausalLM(config)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_connect_aligns_two_gpt2_or_llama_folders_without_a_spec(tmp_path, family):
    """GPT-2 and a Llama-style decoder (RMSNorm, rotary positions, gated MLP, grouped-query attention) built from
    configs with different seeds: known to the alignment, the aligned B computes B's outputs (connect checks it on a
    batch; here again on other tokens), so both lines end at B's loss."""
    for seed in (0, 1):
        torch.manual_seed(seed)
        make = llama_from_config if family == "llama" else lambda: transformers.GPT2LMHeadModel(
            transformers.GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=2, n_head=2))
        make().save_pretrained(tmp_path / f"{family}{seed}")
    a, b = str(tmp_path / f"{family}0"), str(tmp_path / f"{family}1")
    curve = landscape.connect_checkpoints(a, b, str(tmp_path / "out"), data="tests.userland:tokens",
                                          metric="causal_lm", curve="none", align=True, points=3, progress=False,
                                          device="cpu")
    assert curve.alignment["moved"] > 0.5 * curve.alignment["units"]
    line, aligned = curve.paths["line"].values["loss"], curve.paths["aligned_line"].values["loss"]
    assert line[0] == aligned[0] and np.isclose(line[-1], aligned[-1], rtol=1e-5)  # both end at B's function
    model_b = landscape.load_weights(b)
    moved = landscape.load_weights(next(str(p) for p in (tmp_path / "out").iterdir() if p.name.endswith("_aligned")))
    ids = torch.randint(0, VOCAB, (2, T), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(moved(ids).logits, model_b(ids).logits, rtol=1e-5, atol=1e-5)
