"""Sensor contracts declared once: stream checks and Great Expectations suites from them."""
