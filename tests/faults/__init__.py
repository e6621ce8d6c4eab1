"""Fault-injection suite: separate producer and consumer processes, real brokers, a ledger.

See ``docs/reliability.md`` for the scenarios, the checks and their honest limits;
``python -m tests.faults.report [--long]`` runs them and writes the table there.
"""
