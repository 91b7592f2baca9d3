"""Plexus serving."""
