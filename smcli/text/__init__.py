"""Captions and queries: reading caption files, normalising text, vocabularies."""
