"""A `KernelRequest` as the issue body GitHub renders from the Kernel request form.

`render_body` writes exactly what GitHub would (sections `### <label>`, a blank line, the value,
sections one blank line apart, `_No response_` for an empty field), so `parse_request` reads it
back to the same request; `kforge misses --to-issue` files requests with it.
"""
from __future__ import annotations

from kforge.issues.form import DTYPE_OPTIONS, FIELDS, NO_RESPONSE, Field
from kforge.issues.request import KernelRequest

TITLE_PREFIX = "Kernel request: "  # the form's `title:` too


def _value(field: Field, request: KernelRequest) -> str:
    if field.id == "version":
        return str(request.version)
    if field.id == "reference":
        return f"```{field.render}\n{request.reference}\n```" if request.reference else NO_RESPONSE
    if field.id == "shapes":
        return "\n".join("x".join(map(str, s)) for s in request.shapes) or NO_RESPONSE
    if field.id == "dtypes":
        return "\n".join(f"- [{'X' if name in request.dtypes else ' '}] {option}"
                         for option, name in DTYPE_OPTIONS.items())
    if field.id in ("gpu", "goal"):
        return getattr(request, field.id).value
    if field.id == "tolerance":
        return NO_RESPONSE if request.tolerance is None else repr(request.tolerance).removesuffix(".0")
    value = getattr(request, field.id)
    return str(value) if value else NO_RESPONSE


def render_body(request: KernelRequest) -> str:
    """The issue body for `request`, as GitHub renders the form's fields."""
    return "\n\n".join(f"### {field.label}\n\n{_value(field, request)}" for field in FIELDS)


def render_title(request: KernelRequest) -> str:
    shapes = f"{len(request.shapes)} shape{'s' if len(request.shapes) != 1 else ''}"
    return f"{TITLE_PREFIX}{request.op} ({shapes}, {', '.join(request.dtypes)}, {request.gpu.value})"
