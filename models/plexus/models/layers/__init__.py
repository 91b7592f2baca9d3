"""Shared model layers grouped by role: hashing, MLP blocks, interactions, linear terms."""
