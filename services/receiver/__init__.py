"""A demo campaign tool: receives fedscreen's webhooks, verifies them with the independent
``standardwebhooks`` library, de-duplicates by webhook-id and records each release."""
