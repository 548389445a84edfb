"""Checks on untrusted kernel sources that the runtime runs too (the router re-checks a stored
kernel before importing it), so they live below `kforge.evaluate`: `kforge.checks.static`."""
