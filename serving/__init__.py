"""Model updates in: the swappable model holder, top-k, HTTP + Kafka recommendation API."""
