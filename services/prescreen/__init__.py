"""Prescreen: the bank's faust-streaming joiner. Joins pending batches with partner
fragments by batch id, decrypts once per batch, scores, applies the policy."""
