"""The orders sample: exactly-once payments, retried events and fire-and-forget logs."""
