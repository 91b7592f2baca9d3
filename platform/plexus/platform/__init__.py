"""Plexus platform layer: errors, typed configs, the feature spec and stable hashing.

Everything else in Plexus imports from here; this package imports no torch, ray or mlflow.
"""
