"""The redaction gateway: detectors, tokens, the encrypted map, scrub and rehydrate (one pass,
streaming too). Nothing here logs or raises with a redacted value in it."""
