"""Intake: validates candidate events, applies consent, campaign and frequency rules
before any partner sees a candidate, tokenises, batches and fans out requests."""
