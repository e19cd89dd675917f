"""The request path: features through the feature store, the served model, the prediction log."""
