"""Figures and interactive comparisons (one style for the whole notebook series)."""
