//! Embedded MQTT broker (built by the hub-ingress issue).
