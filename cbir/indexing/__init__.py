"""Folder -> plan -> fit -> embed -> commit -> finish."""
