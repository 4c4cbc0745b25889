#!/bin/sh
# Create every topic of topics.txt with its explicit partition count (idempotent).
# Runs once in the apache/kafka image (service topic-init) after Kafka is healthy.
set -eu
bootstrap="${BOOTSTRAP_SERVER:-kafka:9092}"
topics="${TOPICS_FILE:-/etc/fleetstream/topics.txt}"
grep -v '^[[:space:]]*#' "$topics" | while read -r name partitions; do
  [ -n "$name" ] || continue
  /opt/kafka/bin/kafka-topics.sh --bootstrap-server "$bootstrap" --create --if-not-exists \
    --topic "$name" --partitions "$partitions" --replication-factor 1
done
/opt/kafka/bin/kafka-topics.sh --bootstrap-server "$bootstrap" --describe \
  | grep -E '^Topic:' || true
