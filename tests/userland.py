"""Code a user of landscape would write: model factories, data loaders and metrics, for the CLI's --model, --data and
--metric (as tests.userland:NAME) and for the Python API. Data is generated, the same on every call."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def make_mlp(width: int = 16) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, width), nn.ReLU(), nn.Linear(width, 3))


def tensors(n: int = 96, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    return x, (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()


def loader(n: int = 96, batch_size: int = 20) -> DataLoader:
    return DataLoader(TensorDataset(*tensors(n)), batch_size=batch_size)


def loaders() -> dict[str, DataLoader]:
    return {"train": loader(96), "test": DataLoader(TensorDataset(*tensors(40, seed=1)), batch_size=16)}


class DictBatches:
    """A re-iterable of dict batches, as tokenized data comes."""

    def __iter__(self):
        x, y = tensors(64)
        for i in range(0, 64, 16):
            yield {"inputs": x[i:i + 16], "labels": y[i:i + 16]}


class KeywordMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = make_mlp()

    def forward(self, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.net(inputs)}


def images(n: int = 48, batch_size: int = 16) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)),
                      batch_size=batch_size)


def margin(outputs: torch.Tensor, batch) -> dict[str, torch.Tensor]:
    """A user's metric: the mean logit margin of the true class over the best other one."""
    y = batch[-1]
    true = outputs.gather(1, y[:, None]).squeeze(1)
    other = outputs.scatter(1, y[:, None], float("-inf")).max(1).values
    return {"margin": (true - other).sum(dtype=torch.float64), "count": torch.tensor(float(len(y)))}


def inputs_only(outputs: torch.Tensor, batch) -> dict[str, torch.Tensor]:
    """A metric whose loss reads the inputs alone, not the model's outputs: it has no Gauss-Newton matrix."""
    x = batch[0]
    return {"loss": (x ** 2).sum(dtype=torch.float64), "count": torch.tensor(float(len(x)))}


def not_a_metric(outputs, batch):
    return 3.0


def countless(outputs, batch):
    return {"loss": outputs.sum()}


def nothing():
    return None


def empty_batches():
    return [torch.empty(0, 8), torch.empty(0, 8)]


def not_a_model():
    return "a string"


def unlabelled():
    x, _ = tensors(32)
    return [{"inputs": x[:16]}, {"inputs": x[16:]}]


def smoothed_ce(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """A criterion as researchers write one: the batch's mean loss."""
    return nn.functional.cross_entropy(outputs, targets, label_smoothing=0.1)


def per_sample(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """A criterion that forgot to reduce: one loss per sample."""
    return nn.functional.cross_entropy(outputs, targets, reduction="none")


def tokens(n: int = 8, length: int = 12, vocab: int = 101) -> list[dict[str, torch.Tensor]]:
    """Two batches of token ids for a causal LM (labels are the inputs; the metric shifts them)."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (n, length), generator=g)
    return [{"input_ids": ids[:4], "labels": ids[:4]}, {"input_ids": ids[4:], "labels": ids[4:]}]


class Residual(nn.Module):
    """A researcher's own network that is no nn.Sequential: a residual hidden layer, so aligning it needs a spec."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.inp, self.hidden, self.out = nn.Linear(8, width), nn.Linear(width, width), nn.Linear(width, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.inp(x))
        return self.out(h + torch.relu(self.hidden(h)))


def residual_spec(model: Residual) -> dict:
    """Its permutation spec: one permutation "h" of the hidden units, on both axes of the residual layer."""
    return {"inp.weight": ["h", None], "inp.bias": ["h"], "hidden.weight": ["h", "h"], "hidden.bias": ["h"],
            "out.weight": [None, "h"]}


def residual_spec_missing_a_tensor(model: Residual) -> dict:
    """A wrong spec: the residual layer's bias is left out, so permuting changes the function."""
    return {k: v for k, v in residual_spec(model).items() if k != "hidden.bias"}
