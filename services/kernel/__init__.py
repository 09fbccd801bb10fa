"""The shared kernel: crypto, model, Kafka and configuration that every service imports."""
