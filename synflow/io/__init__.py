"""synflow.io."""
