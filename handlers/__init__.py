"""Registered handler functions, one module per workflow.

`orchestrator run` imports this package and every module in it, and serves each module-level
Workflow it finds. Add a module here (or point --handlers at your own package) to add a workflow.
"""
