"""Market data: the synthetic market, CSV imports, the rules every bar obeys, ingestion."""
