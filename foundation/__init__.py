"""The bottom layer: lake paths and atomic writes, errors, the canonical schema, identifiers, divisions, settings; imports nothing else of the project."""
