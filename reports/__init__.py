"""Audit reports: map-vs-lesion metrics, agreement, great-expectations checks, figures and HTML."""
