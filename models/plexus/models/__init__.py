"""Plexus models."""
