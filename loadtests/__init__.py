"""Locust load tests for OpenAI-compatible endpoints."""
