"""The HTTP API (``manage.py serve``): the OpenAI Batch API, blendq's native API and the
auditor pages, behind API keys with roles and tenants."""
