"""The importance estimators, one module each; each registers itself with importance.registry."""
