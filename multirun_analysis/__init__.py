"""Cross-sweep tables and figures from MLflow runs."""
