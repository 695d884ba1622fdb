"""Model-agnostic KV memory: active window, long-term store, FAISS indexes."""
