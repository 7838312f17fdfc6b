"""The company registry: which companies this deployment keeps connected."""
