"""placeholder-etl."""
