"""The paper's experiments as functions (each has a CLI command)."""
