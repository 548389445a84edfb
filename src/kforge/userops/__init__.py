"""User-defined ops, a one-way wing above the `kforge.ops` facade; each module imports only those
listed before it:

- `build`: a user op's `OpSpec` from its parts, the checks on them, `OpKind`, the errors;
- `persist`: `$KFORGE_HOME/ops/<name>/` (definition.json, source.py), read back as untrusted data;
- `define`: `kforge.define_op` and `@kforge.op` (register, and persist);
- `kernelbench`: KernelBench-style files (`class Model`, `get_inputs()`) as ops;
- `untrusted`: ops from an untrusted source (an issue) and `Trust`, which code a process runs;
- `load`: a persisted op registered by name, its code run as the caller's `Trust` allows.

The facade imports `load` and `persist` only inside its lazy lookups (`kforge.ops.get_spec`), and
nothing here imports the facade: ops register through `kforge.ops.registry`.
"""
