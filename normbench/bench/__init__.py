"""The speed job: timing, the device and host clocks, the byte model and roofline, layers and models."""
