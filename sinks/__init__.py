"""Sinks: ClickHouse hit tables, Redis mirror, Kafka producers."""
