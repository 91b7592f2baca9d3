"""Training and evaluation of CTR models through Ray Train."""
