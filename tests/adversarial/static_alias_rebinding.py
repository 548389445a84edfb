"""Cheat: rebinds an imported module's name to torch.Tensor (an allowed name), so that
`math.softmax(x, -1)` reads as the math module to a check that resolves names by their import,
and is vendor's softmax when it runs. Caught statically: Rule.PATCH (imported names keep what
they were imported as)."""
import math

import torch


def forward(x):
    math = torch.Tensor
    return math.softmax(x, -1)
