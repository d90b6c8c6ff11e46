"""Budgets: fixed UTC windows, the cumulative ledger shared with the operator, and the
sidecar's lease holder that reserves before and settles after each upstream call."""
