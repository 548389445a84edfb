"""Cheat: reaches exec through triton.language.core, which re-exports the builtins module
(every path under triton.language used to be allowed), and runs host code the check never saw:
here torch's own rms_norm, built from strings. Caught statically: Rule.API
(triton.language.core is no public name of triton.language)."""
import torch
import triton
import triton.language as tl


def forward(x, weight, eps=1e-6):
    scope = {"x": x, "w": weight, "eps": eps}
    tl.core.builtins.exec("import torch; y = torch.rms_norm(x, x.shape[-1:], w, eps)", scope)
    return scope["y"]
