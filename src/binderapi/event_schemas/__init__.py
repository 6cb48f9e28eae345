"""JSON schemas of the analytics events binderapi writes."""
