"""The partner service: runs in the partner's own domain, answers fragment requests
from its local feature store and takes part in federated training."""
