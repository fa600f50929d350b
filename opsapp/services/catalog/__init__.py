"""The revision catalog: sync, load, graph, downgrade planner, drift."""
