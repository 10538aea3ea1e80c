"""Metering: usage rows (and, later, prices, budgets and the revenue-share ledger)."""
