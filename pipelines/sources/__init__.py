"""Sources: the registry (config/sources.toml), extract, the batch check, standardise."""
