"""mobilevlm_agent: on-board MobileVLM vision-language understanding and planning for robots."""
__version__ = "0.1.0"
