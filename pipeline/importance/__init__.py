"""Sample importance: estimators behind one interface, and the transform from scores to weights."""
