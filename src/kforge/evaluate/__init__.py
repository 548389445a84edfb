"""The offline side that proves implementations correct and measures them.

`kforge.evaluate.calibrate` checks implementations of an op on one problem against the reference
and times them, giving score-table records keyed exactly as the router keys calls. The runtime
(`ops`, `backends`, `router`) never imports this package.
"""
