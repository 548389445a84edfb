"""The router: dispatch keys (pure), the persisted score table, the choice policy, the hot path."""
