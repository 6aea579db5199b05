"""reconcile: keep a cloud's image catalog equal to a desired-state catalog kept in git."""

__version__ = "0.1.0"
