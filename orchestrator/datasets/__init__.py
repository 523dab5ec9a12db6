"""Versioned datasets: drafts, final immutable versions, tags, lineage, local copies."""
