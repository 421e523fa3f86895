"""Hydra config tree shipped inside the package (a package so Hydra can find it from any entry point)."""
