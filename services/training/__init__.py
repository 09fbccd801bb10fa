"""Federated training, bank side: the coordinator that runs docs/design.md §3's
protocol with every partner over Kafka and builds the model bundles."""
