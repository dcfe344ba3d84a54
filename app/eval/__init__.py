"""Quality evaluation on labeled data: `python -m app.eval pairs|workload FILE`."""
