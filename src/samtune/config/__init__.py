"""The run configuration: pydantic models, one module per section, the one place defaults live.

``samtune.config.data`` (dataset sources), ``samtune.config.prompts`` (augmentation and prompt
sampling) and later ``samtune.config.train`` each hold their section's schema.
"""
