"""Test workflows and helpers shared by the test suites."""
