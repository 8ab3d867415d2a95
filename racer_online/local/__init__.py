"""Local services for development, the demo and the tests: broker and Redis processes."""
