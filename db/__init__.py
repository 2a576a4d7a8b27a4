"""Tables, engine and the write and read paths. Imports nothing of ours, no Celery, no torch."""
