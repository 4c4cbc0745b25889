"""MQTT to Kafka bridge service (not built yet)."""
