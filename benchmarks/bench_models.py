"""Teacher factories for the benchmarks (named on the command line like users' own)."""

import torch


def mlp(seed: int, hidden=(1200, 1200), inputs=784, classes=10) -> torch.nn.Module:
    torch.manual_seed(seed)
    layers, width = [torch.nn.Flatten()], inputs
    for h in hidden:
        layers += [torch.nn.Linear(width, h), torch.nn.ReLU()]
        width = h
    layers.append(torch.nn.Linear(width, classes))
    return torch.nn.Sequential(*layers)


def mlp1200_a():
    return mlp(1)


def mlp1200_b():
    return mlp(2)


def mlp1200_c():
    return mlp(3)


class _Trivial(torch.nn.Module):
    """Nearly free logits, so that a run measures the write path alone."""

    def __init__(self):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.linspace(-1, 1, 10))

    def forward(self, x):
        return x.flatten(1)[:, :10] + self.bias


def trivial():
    return _Trivial()
