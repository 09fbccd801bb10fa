"""``fedscreen campaigns``: the marketing operator's campaign configuration at run time."""
