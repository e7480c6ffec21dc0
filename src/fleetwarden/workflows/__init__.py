"""Workflows: each job (audit, guard, window, compliance, report) as one function over a RunContext."""
