"""Entry points: the CLI, the demo, the replay, the monitor, the report and the dashboard."""
