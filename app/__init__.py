"""spark-control: the web front and the contracts shared with the workers."""
