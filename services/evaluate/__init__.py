"""``fedscreen evaluate``: the federated model against the bank-only floor and the pooled
ceiling, on one stratified split, through the real protocol (issue 3)."""
