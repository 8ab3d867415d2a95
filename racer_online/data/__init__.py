"""Data shipped with the package: the llmrouter-9llm outcomes (MIT, see its LICENSE)."""
