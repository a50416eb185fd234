"""Weights in their outside forms (see the modules)."""
