"""Integrations with LLM gateways: `racer_online.integrations.litellm` (extra ``[litellm]``)."""
