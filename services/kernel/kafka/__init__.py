"""Kafka: the embedded broker, topics, clients, chunking and dead-letter queues."""
