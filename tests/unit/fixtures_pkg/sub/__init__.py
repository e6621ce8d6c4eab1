"""A subpackage: the scan recurses into it."""
