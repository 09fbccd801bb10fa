"""Signed webhooks: deliver every release on ``campaign.released.v1`` to the campaign tools
subscribed to its campaign, following the Standard Webhooks spec, at least once."""
