"""Kafka adapters: client factories, batch consumers and producers, publishing."""
