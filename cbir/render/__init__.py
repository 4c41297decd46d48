"""Montages, HTML galleries and plots of results."""
