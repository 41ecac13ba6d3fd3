"""The blob signer: namespace-scoped presigned S3 URLs (paths, SigV4, wire shapes, service)."""
