"""Cheat: builds its real code from a string at run time, out of reach of any check of the file.
Caught statically: Rule.DYNAMIC (exec, globals)."""
import torch

_CODE = "import torch.nn.functional as F\ndef _impl(x):\n    return F.softmax(x, -1)\n"
exec(_CODE, globals())


def forward(x):
    return _impl(x)  # noqa: F821
