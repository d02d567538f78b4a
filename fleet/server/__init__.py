"""The fleet server: MQTT ingest, storage, alerts, REST API and metrics (`fleet serve`)."""
