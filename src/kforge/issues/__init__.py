"""Kernel requests filed as GitHub issues: the form's fields (`form`), the parsed and validated
request (`request`), the issue body's parser and renderer (`parse`, `render`), and the GitHub REST
client (`github`). An entry-point layer: it may import anything below it, nothing imports it.

The issue text is untrusted: only the parsed, validated fields of a `KernelRequest` leave the
parser, as data.
"""
