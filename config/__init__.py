"""Shipped configuration (the top-level config/ folder): meter.toml, platforms.toml, devices.toml."""
