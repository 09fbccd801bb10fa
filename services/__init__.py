"""fedscreen services: intake, partner, prescreen, webhooks, training, and the shared kernel."""
