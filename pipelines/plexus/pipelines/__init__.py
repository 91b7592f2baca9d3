"""Plexus pipelines."""
