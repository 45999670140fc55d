"""The MQTT link, the boundary around every subscribed handler, and publish size caps."""
