"""The engine's parts, each a plain module over Polars frames and numpy arrays.

``entity_resolution.engine.link`` composes them: normalise -> blocking (signatures, exact nodes,
candidate pairs) -> compare (levels per pair) -> model (m, u, lambda; match probabilities) ->
cluster (constrained, strongest evidence first). Only ``entity_resolution.engine`` is public.
"""
