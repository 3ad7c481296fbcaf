"""The food-order demo's files: its tables (schema.sql), queries and seed data.

Installed as ``orchestrator.demo.files``, so that ``orchestrator demo`` works from an install.
"""
