"""Quality: the Great Expectations suites and the offline Data Docs site."""
