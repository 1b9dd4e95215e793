"""Using a trained matcher: scoring pairs, retrieval, caption ranking, saved indexes."""
