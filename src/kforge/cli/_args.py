"""Strings from the command line become types here, once: shapes, dtypes, devices, executors."""
from __future__ import annotations

import torch

from kforge.errors import KforgeError
from kforge.specs import OpSpec

DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
          "half": torch.float16, "fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
          "fp64": torch.float64, "float64": torch.float64}


def shape(text: str) -> tuple[int, ...]:
    """"32x4096" or "2,3,128" -> (32, 4096) / (2, 3, 128)."""
    try:
        dims = tuple(int(d) for d in text.replace(",", "x").split("x"))
    except ValueError:
        raise KforgeError(f"--shape {text!r}: expected dims like 32x4096") from None
    if not dims or any(d < 0 for d in dims):
        raise KforgeError(f"--shape {text!r}: dims must be non-negative integers")
    return dims


def dtype(text: str) -> torch.dtype:
    try:
        return DTYPES[text.lower()]
    except KeyError:
        raise KforgeError(f"--dtype {text!r}: use one of {', '.join(sorted(DTYPES))}") from None


def device(text: str | None) -> str:
    """--device: "cpu", "cuda" or "cuda:N" of a GPU torch sees here (default: cuda when there is one)."""
    if text is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(text)
    except (RuntimeError, ValueError):
        raise KforgeError(f"--device {text!r}: use cpu, cuda or cuda:N") from None
    if parsed.type not in ("cpu", "cuda"):
        raise KforgeError(f"--device {text!r}: kforge runs on cpu or cuda")
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            why = "torch here is a CPU build" if torch.version.cuda is None else "torch sees no CUDA GPU"
            raise KforgeError(f"--device {text}: {why} (see `bash scripts/setup.sh --print-torch`); use --device cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise KforgeError(f"--device {text}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return text


def add_problem_arguments(parser) -> None:
    parser.add_argument("--shape", action="append", default=None, metavar="DIMS",
                        help="a shape of the op's primary input, e.g. 32x4096 (repeatable; default: the spec's smoke set)")
    parser.add_argument("--set", action="append", default=None, metavar="NAME", dest="shape_set",
                        help="the shapes of one of the op's shape sets (smoke, odd, edge, decode, prefill; "
                             "repeatable, adds to --shape)")
    parser.add_argument("--dtype", action="append", default=None, metavar="DTYPE",
                        help="bf16, fp16, fp32 (repeatable; default: every dtype the op takes but fp64)")
    parser.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda when available)")
    parser.add_argument("--executor", default="local", choices=("local", "inprocess", "ray"),
                        help="where candidates run: local sandboxed workers (default), in this process "
                             "(tests only: no isolation), or a Ray cluster")
    parser.add_argument("--no-record", action="store_true", help="do not write the results to the score table")
    add_sandbox_argument(parser)


def add_sandbox_argument(parser) -> None:
    """--unsafe-no-sandbox, for the commands that run candidates (acted on in `kforge.cli.main`)."""
    parser.add_argument("--unsafe-no-sandbox", action="store_true",
                        help="where bubblewrap cannot run, run untrusted candidates in plain worker processes "
                             "anyway (their code can read and write what you can; see `kforge doctor`)")


def shapes(args, spec: OpSpec) -> list[tuple[int, ...]] | None:
    """The shapes named by --shape and --set, in order, without repeats; None when neither was given."""
    if not args.shape and not args.shape_set:
        return None
    out = [shape(s) for s in args.shape or ()]
    out += [s for s in spec.shapes(*args.shape_set) if s not in out] if args.shape_set else []
    return out


def executor(kind: str):
    from kforge.evaluate import isolation
    from kforge.evaluate.executors import make_executor

    if kind == "inprocess" and not isolation.unsafe_allowed():
        raise KforgeError("--executor inprocess runs candidates in this process, with no isolation at all: "
                          "add --unsafe-no-sandbox to mean it")
    return make_executor(kind)
