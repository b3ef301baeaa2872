"""absl flag definitions, one module per binary. Only binaries import these."""
