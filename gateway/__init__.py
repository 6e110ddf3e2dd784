"""The Modbus gateway: polls Modbus TCP / SunSpec devices into MQTT telemetry and carries MQTT commands
back to the devices as setpoint writes."""
