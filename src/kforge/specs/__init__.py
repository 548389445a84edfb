"""Op specs: `OpSpec` and one module per built-in op, each holding that op's whole meaning in `SPEC`.

A leaf: nothing here imports kforge beyond `kforge.errors`, and importing a spec registers
nothing (`kforge.ops` is the facade that registers each spec with torch.library and the router).
`from kforge.specs.rms_norm import SPEC` is rms_norm's spec; `from kforge.specs import OpSpec`
the type every `spec` parameter carries.
"""
from __future__ import annotations

from kforge.specs.spec import (FLOAT_DTYPES, Magnitude, OpSpec, OutputMismatch, Problem, Shape, Tolerance,
                               meta_inputs, resolution_floor, to_dtype)

__all__ = ["FLOAT_DTYPES", "Magnitude", "OpSpec", "OutputMismatch", "Problem", "Shape", "Tolerance",
           "meta_inputs", "resolution_floor", "to_dtype"]
