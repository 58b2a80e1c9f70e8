"""Profiles: one profile per firm (build, grading, lists), the column dictionary, the export."""
