"""spark-control workers: the SSH executor and the blob signer."""
